"""Ids without a vocabulary: raw ids (strings or integers of any size) hashed into a table
of a fixed number of rows.

A feature with ``hash_buckets = N`` gets a table of N + 1 rows. Row 0 is the
out-of-vocabulary row: every id that training did not see (or saw fewer than ``min_count``
times, so that row 0 learns what a rare id looks like) maps there, never onto another id's
row. Every other id maps to ``1 + fingerprint(id) mod N``; two training ids may share a
bucket (the price of a fixed table: with n ids in N buckets about n^2 / 2N pairs collide),
which ``HashedIds.collisions`` counts. What is kept per feature is the sorted 64-bit
fingerprints of the training ids (8 bytes per id, no strings), so an encoder saved with a
run encodes serving traffic exactly as training did.

The fingerprint is our own stable 64-bit hash (a polynomial over the characters, then the
SplitMix64 finaliser; integers go straight to the finaliser), identical across processes,
machines and Python versions, unlike Python's ``hash``. The integer 5 and the string "5" are
different ids; a column holds one kind.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

_MULT = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime, as the polynomial's base
_SEED = np.uint64(0xCBF29CE484222325)


def _finalise(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit reaches every output bit (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def fingerprints(values: np.ndarray | list, name: str = "ids") -> np.ndarray:
    """Stable 64-bit fingerprints (uint64) of raw ids: integers (not negative) or strings."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b" or arr.dtype.kind == "f":
        raise ValueError(f"{name}: ids must be integers or strings, got dtype {arr.dtype}")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            where = int(np.argmin(arr))
            raise ValueError(f"{name}: negative id {int(arr[where])} at row {where}")
        return _finalise(arr.astype(np.uint64) ^ _SEED)
    text = arr.astype(str)  # object or bytes columns: as text
    flat = text.reshape(-1)
    width = max(text.dtype.itemsize // 4, 1)
    codes = np.ascontiguousarray(flat).view(np.uint32).reshape(len(flat), width)
    lengths = np.char.str_len(flat)
    h = np.full(len(flat), _SEED, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):  # only each string's own characters, so width never matters
            inside = j < lengths
            h = np.where(inside, (h ^ codes[:, j].astype(np.uint64)) * _MULT, h)
        h = h ^ lengths.astype(np.uint64)
    return _finalise(h).reshape(arr.shape)


@dataclasses.dataclass(frozen=True)
class HashedIds:
    """The encoder of one hashed feature: ``encode`` maps raw ids to table rows."""

    buckets: int
    known: np.ndarray  # sorted fingerprints of the training ids that get a bucket
    name: str = "ids"
    # How training read the ids: "int" or "str" (the same id read the other way hashes
    # elsewhere, so later rows are read the same way); "" where not known.
    id_type: str = ""

    @classmethod
    def fit(
        cls, train_ids: np.ndarray | list, buckets: int, min_count: int = 1, name: str = "ids"
    ) -> HashedIds:
        """From the training split's column: ids seen at least ``min_count`` times keep a
        bucket; the rest, and every id training never saw, share row 0."""
        if int(buckets) < 1:
            raise ValueError(f"{name}: hash_buckets must be >= 1, got {buckets}")
        if int(min_count) < 1:
            raise ValueError(f"{name}: min_count must be >= 1, got {min_count}")
        unique, counts = np.unique(fingerprints(train_ids, name), return_counts=True)
        return cls(int(buckets), unique[counts >= min_count], name)

    @property
    def rows(self) -> int:
        """The table's rows: the buckets and the out-of-vocabulary row 0."""
        return self.buckets + 1

    def encode(self, ids: np.ndarray | list) -> np.ndarray:
        """Table rows (int32) of raw ids: ``1 + fingerprint mod buckets`` for known ids, 0
        for the others."""
        fp = fingerprints(ids, self.name)
        pos = np.searchsorted(self.known, fp)
        found = np.zeros(fp.shape, bool)
        inside = pos < len(self.known)
        found[inside] = self.known[pos[inside]] == fp[inside]
        rows = (fp % np.uint64(self.buckets)).astype(np.int64) + 1
        return np.where(found, rows, 0).astype(np.int32)

    def collisions(self) -> int:
        """Known ids that share their bucket with an earlier known id."""
        buckets = self.known % np.uint64(self.buckets)
        return int(len(buckets) - len(np.unique(buckets)))

    def save(self, path: str | pathlib.Path) -> None:
        np.savez(path, buckets=self.buckets, known=self.known, name=self.name, id_type=self.id_type)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> HashedIds:
        with np.load(path) as f:
            id_type = str(f["id_type"]) if "id_type" in f else ""
            return cls(int(f["buckets"]), f["known"], str(f["name"]), id_type)
