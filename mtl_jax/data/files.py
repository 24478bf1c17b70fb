"""Datasets from your own files: CSV or Parquet, a column schema in the config.

``configs/files.py`` is the documented template. The ``data`` section names the files (a
path, a glob, or a comma-separated list of either, per split; or one source and a split
rule) and how to read them; ``data.labels`` says how each task's label comes from the
columns; the top-level ``features`` section says how each input feature is encoded:

- ``categorical``: a vocabulary from the train split (ids seen at least ``min_count`` times
  get rows 1..V, in order of first appearance; row 0 is the out-of-vocabulary row that
  unseen, rare and missing values share), or with ``hash_buckets = N`` raw ids hashed
  into N buckets plus the same row 0 (mtl_jax/data/hashing.py);
- ``dense``: a number, normalised with train statistics (``none``, ``standard``,
  ``log1p``); missing values become the train mean (``missing="mean"``), 0 (``"zero"``) or
  an error (``"error"``);
- ``multi_hot``: a list per row (a Parquet list column, or a CSV string split at
  ``separator``, e.g. ``"gift|sale"``), each element encoded like a categorical value (a
  vocabulary or ``hash_buckets``), up to ``max_length`` elements (0: the longest train
  list; longer lists keep their first ones); the model averages the elements' embeddings;
- ``text``: a string per row (a title, a description) that the pretrained text encoder
  reads (list the feature in ``text.features``): each distinct text of every split gets an
  id into the frozen table of sentence embeddings (the text is an input, like a price, so
  a cold item's description is there at test time).

Every encoder is fitted on the train split only and saved with the run
(``FileEncoding.save``), so serving encodes raw rows exactly as training did. Bad input is
a ``DataFormatError`` naming the file, its line and the column.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax.data.hashing import HashedIds, fingerprints
from mtl_jax.data.schema import (
    FeatureSpec,
    MultiTaskDataset,
    Split,
    bag_mask_name,
    random_split,
)
from mtl_jax.errors import ConfigError, DataFormatError
from mtl_jax.tasks import TaskSpec

log = logging.getLogger("mtl_jax")

FEATURE_KINDS = ("categorical", "dense", "multi_hot", "text")
NORMALIZATIONS = ("none", "standard", "log1p")
MISSING_POLICIES = ("mean", "zero", "error")
LABEL_KINDS = ("binary", "regression", "multiclass", "multilabel")
SPLIT_RULES = ("random", "time", "user")
FORMATS = ("auto", "csv", "parquet")
DEFAULT_MISSING = ("", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class Table:
    """Columns of one split as read (numpy arrays: numbers, or strings with None for
    missing values) and where each row came from, to name it in errors."""

    columns: dict[str, np.ndarray]
    files: list[str]
    file_index: np.ndarray  # (rows,) index into files
    line: np.ndarray  # (rows,) 1-based line in its file (Parquet: row number)
    unit: str = "line"  # what ``line`` counts ("row" for a request's rows)

    def __len__(self) -> int:
        return len(self.file_index)

    def where(self, row: int) -> str:
        return f"{self.files[self.file_index[row]]}, {self.unit} {self.line[row]}"

    def take(self, index: np.ndarray) -> Table:
        return Table(
            {k: v[index] for k, v in self.columns.items()},
            self.files,
            self.file_index[index],
            self.line[index],
            self.unit,
        )


def expand_paths(spec: str, what: str, data_dir: str = "", hint: str = "") -> list[str]:
    """Files of a comma-separated list of paths and globs (relative ones under ``data_dir``
    when it is set), each glob's matches sorted. ``hint`` ends the error when a file is
    missing (what the data set's files are and where they come from)."""
    out = []
    tail = f"; {hint}" if hint else ""
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if data_dir and not pathlib.Path(part).is_absolute():
            part = str(pathlib.Path(data_dir) / part)
        if glob.has_magic(part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise DataFormatError(f"{what}: the glob {part!r} matches no file{tail}")
            out.extend(matches)
        elif not pathlib.Path(part).is_file():
            raise DataFormatError(f"{what}: no such file {part!r}{tail}")
        else:
            out.append(part)
    if not out:
        raise DataFormatError(f"{what}: no file given{tail}")
    return out


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower()
    if name.endswith((".parquet", ".pq", ".parquet.brotli", ".parquet.snappy")):
        return "parquet"
    if name.endswith((".csv", ".tsv", ".txt", ".data", ".test", ".csv.gz", ".sample")):
        return "csv"
    raise DataFormatError(
        f"{path}: cannot tell the format from the name; set data.format to csv or parquet"
    )


def _to_numpy(column: Any, missing: frozenset[str]) -> np.ndarray:
    """A pyarrow column as numpy: numbers as float64 (nulls NaN) or int64 (no nulls),
    anything else as an object array of stripped strings, None where missing."""
    import pyarrow as pa

    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy().astype(np.int64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_boolean(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        out = np.empty(len(column), object)  # tuples of element keys; None where missing
        for i, v in enumerate(column.to_pylist()):
            out[i] = None if v is None else tuple(_key(e) for e in v if e is not None)
        return out
    values = column.cast(pa.string()).to_pylist()
    out = np.empty(len(values), object)
    for i, v in enumerate(values):
        v = None if v is None else v.strip()
        out[i] = None if v is None or v in missing else v
    return out


def _csv_options(
    path: str, options: Mapping[str, Any], block_size: int | None = None, types: Any = None
) -> tuple:
    """pyarrow's read, parse and convert options for a CSV file (``types``: columns whose
    type is set, not inferred), and its first data line."""
    import pyarrow.csv as pacsv

    missing = frozenset(options.get("missing_values", DEFAULT_MISSING))
    names = list(options.get("columns", ()))
    header = options.get("header", True)
    if not header and names:
        with open(path, errors="replace") as f:
            fields = len(f.readline().split(options.get("delimiter", ",")))
        if fields == len(names) + 1:  # a copy with a leading row id (e.g. DeepCTR's)
            names = ["row_id", *names]
    read = pacsv.ReadOptions(
        column_names=None if header else (names or None),
        autogenerate_column_names=not header and not names,
        **({"block_size": block_size} if block_size else {}),
    )
    parse = pacsv.ParseOptions(delimiter=options.get("delimiter", ","))
    convert = pacsv.ConvertOptions(
        null_values=sorted(missing), strings_can_be_null=True, quoted_strings_can_be_null=True,
        column_types=types or {},
    )  # fmt: skip
    return read, parse, convert, 2 if header else 1


def _record_batches(
    path: str, options: Mapping[str, Any], rows: int | None, types: Any = None
) -> tuple[Any, int]:
    """``(batches, first line)``: the file's record batches (all at once when ``rows`` is
    None, else about ``rows`` at a time) and the line its first row is on."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if pathlib.Path(path).stat().st_size == 0:
        raise DataFormatError(f"{path}: the file is empty")
    if _format_of(path, options.get("format", "auto")) == "parquet":
        if rows is None:
            return pq.read_table(path).to_batches(), 1
        return pq.ParquetFile(path).iter_batches(batch_size=rows), 1
    # A CSV row is rarely under 16 bytes: blocks of 16 x rows bytes hold about rows rows.
    block = rows and max(rows * 16, 1 << 20)
    read, parse, convert, first = _csv_options(path, options, block, types)
    if rows is None:
        return pacsv.read_csv(path, read, parse, convert).to_batches(), first
    return pacsv.open_csv(path, read, parse, convert), first


def _read_as_text(error: Exception, path: str, options: Mapping[str, Any], types: dict) -> bool:
    """After pyarrow failed to convert a CSV column (it types a column from its first block:
    integers up front, "2.5" or "abc" later), mark that column to be read as text and say
    whether to read again; the encoders then parse its values and name a bad one's line."""
    import re

    import pyarrow as pa
    import pyarrow.csv as pacsv

    found = re.search(r"In CSV column #(\d+): CSV conversion error", str(error))
    if not found:
        return False
    read, parse, convert, _ = _csv_options(path, options, None, types)
    name = pacsv.open_csv(path, read, parse, convert).schema.names[int(found.group(1))]
    if name in types:
        return False
    types[name] = pa.string()
    return True


def read_chunks(path: str, options: Mapping[str, Any], rows: int | None = None) -> Iterator[Table]:
    """One CSV or Parquet file as ``Table``s of about ``rows`` rows (None: one table), each
    row numbered by its line in the file for error messages."""
    import pyarrow as pa

    fmt = _format_of(path, options.get("format", "auto"))
    missing = frozenset(options.get("missing_values", DEFAULT_MISSING))
    done, types = 0, {}
    while True:
        try:
            batches, first_line = _record_batches(path, options, rows, types)
            passed = 0  # rows of this reading; the first ``done`` were yielded before a retry
            for batch in batches:
                if passed + batch.num_rows <= done:
                    passed += batch.num_rows
                    continue
                batch = batch.slice(done - passed) if passed < done else batch
                passed = done + batch.num_rows
                if batch.num_rows == 0:
                    continue
                names = batch.schema.names
                columns = {n: _to_numpy(batch.column(i), missing) for i, n in enumerate(names)}
                n = batch.num_rows
                line = np.arange(done, done + n, dtype=np.int64) + first_line
                done += n
                yield Table(columns, [path], np.zeros(n, np.int32), line)
            break
        except (pa.ArrowInvalid, OSError) as e:
            csv_type = fmt != "parquet" and isinstance(e, pa.ArrowInvalid)
            if csv_type and _read_as_text(e, path, options, types):
                continue
            kind = "Parquet" if fmt == "parquet" else "CSV"
            raise DataFormatError(
                f"{path}: not readable as {kind}: {str(e).splitlines()[0]}"
            ) from e
    if done == 0:
        raise DataFormatError(f"{path}: the file has a header but no rows")


def read_file(path: str, options: Mapping[str, Any]) -> Table:
    """One CSV or Parquet file as a ``Table``."""
    chunks = list(read_chunks(path, options))
    if len(chunks) == 1:
        return chunks[0]
    return Table(
        {k: np.concatenate([c.columns[k] for c in chunks]) for k in chunks[0].columns},
        [path],
        np.zeros(sum(len(c) for c in chunks), np.int32),
        np.concatenate([c.line for c in chunks]),
    )


def read_files(paths: Sequence[str], options: Mapping[str, Any]) -> Table:
    """Several files of one split, which must have the same columns."""
    tables = [read_file(p, options) for p in paths]
    first = tables[0]
    for t in tables[1:]:
        if list(t.columns) != list(first.columns):
            raise DataFormatError(
                f"{t.files[0]}: columns {list(t.columns)} differ from {first.files[0]}'s "
                f"{list(first.columns)}"
            )
    columns = {}
    for name in first.columns:
        parts = [t.columns[name] for t in tables]
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        elif any(p.dtype.kind == "f" for p in parts):
            parts = [p.astype(np.float64) for p in parts]
        columns[name] = np.concatenate(parts)
    file_index = np.concatenate([np.full(len(t), i, np.int32) for i, t in enumerate(tables)])
    return Table(
        columns,
        [t.files[0] for t in tables],
        file_index,
        np.concatenate([t.line for t in tables]),
    )


# --------------------------------------------------------------------------- encoders


def _show(value: Any) -> str:
    """A raw value as the file has it: 7, not np.float64(7.0); strings quoted."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    return repr(value)


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], bool)
    if values.dtype.kind == "f":
        return np.isnan(values)
    return np.zeros(len(values), bool)


def _key(v: Any) -> str | None:
    """One category value as a string (integers without a trailing .0); None if missing."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _as_keys(values: np.ndarray) -> np.ndarray:
    """Category values as strings (integers without a trailing .0), None kept."""
    out = np.empty(len(values), object)
    for i, v in enumerate(values):
        out[i] = _key(v)
    return out


def _lists(values: np.ndarray, separator: str) -> list[tuple[str, ...] | None]:
    """Each row's elements: a Parquet list as read, a string split at ``separator`` (empty
    parts dropped), a single number as one element; None where the row is missing."""
    out: list[tuple[str, ...] | None] = []
    for v in values:
        if isinstance(v, tuple) or v is None:
            out.append(v)
        elif isinstance(v, list):  # a JSON list, as a request sends it
            out.append(tuple(k for k in map(_key, v) if k is not None))
        elif isinstance(v, str):
            out.append(tuple(e.strip() for e in v.split(separator) if e.strip()))
        else:
            key = _key(v)
            out.append(None if key is None else (key,))
    return out


def _distinct_keys(values: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """``(present, keys, first, inverse)``: the rows holding a value, their distinct values
    as keys (``_key``), each key's first row among them and every present row's key index.
    Numbers are made unique before they become strings (a Python loop over distinct values
    only), which keeps a large numeric id column fast."""
    present = np.flatnonzero(~_missing_mask(values))
    raw = values[present]
    if raw.dtype == object:
        raw = _as_keys(raw).astype(str)
    uniques, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    keys = list(uniques) if uniques.dtype.kind in "US" else list(_as_keys(uniques))
    return present, [str(k) for k in keys], first, inverse.reshape(-1)


class KeyCounter:
    """Counts of each category value over chunks of a column, with the position of its
    first appearance: what a vocabulary is fitted from, one chunk at a time."""

    def __init__(self):
        self.first: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.offset = 0

    def update(self, values: np.ndarray) -> None:
        present, keys, first, inverse = _distinct_keys(values)
        counts = np.bincount(inverse, minlength=len(keys))
        for k, f, c in zip(keys, first, counts, strict=True):
            if k not in self.first:
                self.first[k] = self.offset + int(present[f])
                self.count[k] = 0
            self.count[k] += int(c)
        self.offset += len(values)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Values seen in train at least ``min_count`` times -> rows 1..V, in order of first
    appearance; the rest -> 0."""

    values: tuple[str, ...]

    @classmethod
    def from_counts(cls, counter: KeyCounter, min_count: int) -> Vocabulary:
        kept = [k for k, c in counter.count.items() if c >= min_count]
        return cls(tuple(sorted(kept, key=counter.first.__getitem__)))

    @property
    def rows(self) -> int:
        return len(self.values) + 1

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {v: i + 1 for i, v in enumerate(self.values)}

    def encode(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(len(values), np.int32)
        present, keys, _, inverse = _distinct_keys(values)
        rows = np.array([self._index.get(k, 0) for k in keys], np.int32)
        out[present] = rows[inverse] if len(keys) else 0
        return out


@dataclasses.dataclass(frozen=True)
class DenseStats:
    """A dense column's train statistics and its normalisation."""

    normalize: str
    missing: str
    mean: float
    std: float

    @classmethod
    def from_moments(cls, moments: Moments, normalize: str, missing: str) -> DenseStats:
        if moments.n == 0:
            return cls(normalize, missing, 0.0, 1.0)
        std = float(np.sqrt(moments.m2 / moments.n))
        return cls(normalize, missing, float(moments.mean), std if std > 0 else 1.0)

    def encode(self, values: np.ndarray) -> np.ndarray:
        x = _transform(values, self.normalize)
        fill = {"mean": self.mean, "zero": 0.0, "error": np.nan}[self.missing]
        x = np.where(np.isnan(x), fill, x)
        if self.normalize == "standard":
            x = (x - self.mean) / self.std
        return x.astype(np.float32)[:, None]


@dataclasses.dataclass(frozen=True)
class BagEncoder:
    """A list column: its elements' vocabulary (or hashing) and the padded bag width."""

    ids: Vocabulary | HashedIds
    max_length: int
    separator: str

    @property
    def rows(self) -> int:
        return self.ids.rows

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, both (rows, max_length): the first ``max_length`` elements of
        each list (unknown ones at row 0, like a categorical value), mask 1 where an element
        sits; a missing or empty list is all padding."""
        lists = [(lst or ())[: self.max_length] for lst in _lists(values, self.separator)]
        lengths = np.array([len(lst) for lst in lists], np.int64)
        flat = np.array([e for lst in lists for e in lst], object)
        mask = (np.arange(self.max_length)[None, :] < lengths[:, None]).astype(np.float32)
        ids = np.zeros(mask.shape, np.int32)
        if flat.size:
            ids[mask > 0] = self.ids.encode(flat.astype(str))
        return ids, mask


@dataclasses.dataclass(frozen=True)
class TextColumn:
    """A text column: id i -> ``texts[i]``; id 0 is the missing text ("")."""

    texts: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.texts)

    def encode(self, values: np.ndarray) -> np.ndarray:
        index = {t: i for i, t in enumerate(self.texts)}
        return np.array([index.get(_key(v) or "", 0) for v in values], np.int32)


class Moments:
    """Count, mean and sum of squared deviations of the finite values seen, merged chunk by
    chunk (Chan et al.'s pairwise update: no cancellation for large values such as
    timestamps)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if not x.size:
            return
        n, mean = x.size, float(x.mean())
        m2 = float(np.square(x - mean).sum())
        delta, total = mean - self.mean, self.n + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total


def _transform(values: np.ndarray, normalize: str) -> np.ndarray:
    x = values.astype(np.float64)
    if normalize == "log1p":
        x = np.log1p(np.maximum(x, 0.0))
    return x


# --------------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True)
class FileEncoding:
    """Every fitted encoder of a file dataset: what a later step needs to encode raw rows."""

    # name -> Vocabulary | HashedIds | DenseStats | BagEncoder | TextColumn
    features: dict[str, Any]
    columns: dict[str, str]  # feature name -> source column

    def save(self, directory: str | pathlib.Path) -> None:
        """``features.json`` (vocabularies, statistics) and one ``<name>.hash.npz`` per
        hashed feature."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, enc in self.features.items():
            entry: dict[str, Any] = {"column": self.columns[name]}
            if isinstance(enc, BagEncoder):
                entry.update(kind="multi_hot", max_length=enc.max_length, separator=enc.separator)
                enc = enc.ids
            if isinstance(enc, Vocabulary):
                entry.setdefault("kind", "categorical")
                entry.update(vocabulary=list(enc.values))
            elif isinstance(enc, HashedIds):
                enc.save(directory / f"{name}.hash.npz")
                entry.setdefault("kind", "categorical")
                entry.update(hash_buckets=enc.buckets)
            elif isinstance(enc, TextColumn):
                entry.update(kind="text", texts=list(enc.texts))
            else:
                entry.update(kind="dense", **dataclasses.asdict(enc))
            out[name] = entry
        (directory / "features.json").write_text(json.dumps(out, indent=1))


def table_column(table: Table, column: str, what: str) -> np.ndarray:
    if column not in table.columns:
        raise DataFormatError(
            f"{table.files[0]}: no column {column!r} (for {what}); columns: {list(table.columns)}"
        )
    return table.columns[column]


def _numbers(table: Table, column: str, what: str) -> np.ndarray:
    """A column as float64 (NaN where missing), or an error naming the first bad value."""
    values = table_column(table, column, what)
    if values.dtype != object:
        return values.astype(np.float64)
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise DataFormatError(
                f"{table.where(i)}, column {column!r}: {v!r} is not a number ({what})"
            ) from None
    return out


def _hash_input(values: np.ndarray, id_type: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(present rows, raw ids)`` as the hasher takes them: integers (a numeric column
    with gaps is read as floats: back to integers) or strings; with ``id_type`` ("int",
    "str": how training read the column) read that way, a value that is no integer in an
    integer column left out (it cannot be a training id)."""
    present = np.flatnonzero(~_missing_mask(values))
    ids = values[present]
    if ids.dtype == object:
        keys = _as_keys(ids)
        if id_type == "int":
            numeric = np.array([k.lstrip("-").isdigit() for k in keys], bool)
            present, keys = present[numeric], keys[numeric]
            ids = keys.astype(np.int64)
        else:
            ids = keys.astype(str)
    elif ids.dtype.kind == "f":
        ids = ids.astype(np.int64)
    if id_type == "str" and ids.dtype.kind in "iu":
        ids = ids.astype(str)
    return present, ids


class FingerprintCounter:
    """Counts of each id's fingerprint over chunks: what ``HashedIds`` is fitted from.
    Chunks' counts wait until they outnumber the merged ones, so merging costs amortised
    O(n log n) over a column of any length."""

    def __init__(self, name: str):
        self.name = name
        self._unique = np.zeros(0, np.uint64)
        self._counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.id_type = ""  # "int" or "str" as the first chunk read them

    def update(self, values: np.ndarray) -> None:
        _, ids = _hash_input(values, self.id_type)
        if ids.size and not self.id_type:  # later chunks are read the way the first was
            self.id_type = "int" if ids.dtype.kind in "iu" else "str"
        self._pending.append(np.unique(fingerprints(ids, self.name), return_counts=True))
        if sum(len(u) for u, _ in self._pending) > max(len(self._unique), 1 << 16):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        parts = [(self._unique, self._counts), *self._pending]
        merged, inverse = np.unique(np.concatenate([u for u, _ in parts]), return_inverse=True)
        weights = np.concatenate([c for _, c in parts])
        self._unique = merged
        self._counts = np.bincount(inverse, weights, len(merged)).astype(np.int64)
        self._pending = []

    def known(self, min_count: int) -> np.ndarray:
        """Sorted fingerprints seen at least ``min_count`` times."""
        self._merge()
        return self._unique[self._counts >= min_count]


class FeatureFitter:
    """Fits one feature's encoder chunk by chunk: ``update`` with each train chunk (a text
    column: every split's chunks), then ``finish``. The in-memory dataset feeds it one chunk
    per split; ``python -m mtl_jax.data.prepare`` feeds it a file's worth at a time."""

    def __init__(self, name: str, spec: Mapping[str, Any]):
        self.name, self.kind = name, spec.get("kind", "categorical")
        self.column = spec.get("column") or name
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"features.{name}.kind: {self.kind!r}; valid: {FEATURE_KINDS}")
        self.min_count = int(spec.get("min_count", 1))
        self.buckets = spec.get("hash_buckets")
        self.separator = spec.get("separator", "|") or "|"
        self.max_length = int(spec.get("max_length", 0) or 0)
        self.normalize = spec.get("normalize", "none")
        self.missing = spec.get("missing", "mean")
        if self.kind in ("categorical", "multi_hot"):
            if self.buckets is not None and int(self.buckets) < 1:
                raise ConfigError(
                    f"features.{name}.hash_buckets must be >= 1, got {self.buckets} "
                    "(None: a vocabulary from train)"
                )
            if self.min_count < 1:
                raise ConfigError(f"features.{name}.min_count must be >= 1, got {self.min_count}")
            hashed = self.buckets is not None
            self.counter = FingerprintCounter(name) if hashed else KeyCounter()
        if self.kind == "multi_hot" and self.max_length < 0:
            raise ConfigError(f"features.{name}.max_length must be >= 0, got {self.max_length}")
        if self.kind == "dense":
            if self.normalize not in NORMALIZATIONS:
                raise ConfigError(
                    f"features.{name}.normalize: {self.normalize!r}; valid: {NORMALIZATIONS}"
                )
            if self.missing not in MISSING_POLICIES:
                raise ConfigError(
                    f"features.{name}.missing: {self.missing!r}; valid: {MISSING_POLICIES}"
                )
            self.moments = Moments()
        self.longest = 0
        self.texts: dict[str, None] = {"": None}

    def update(self, table: Table, split: str = "train") -> None:
        if self.kind == "text":
            for v in table_column(table, self.column, f"text feature {self.name!r}"):
                self.texts.setdefault(_key(v) or "", None)
            return
        if split != "train":
            return
        if self.kind == "categorical":
            self.counter.update(table_column(table, self.column, f"feature {self.name!r}"))
        elif self.kind == "multi_hot":
            what = f"multi_hot feature {self.name!r}"
            lists = _lists(table_column(table, self.column, what), self.separator)
            self.counter.update(np.array([e for lst in lists if lst for e in lst], object))
            self.longest = max([self.longest, *(len(lst) for lst in lists if lst)])
        else:
            values = _numbers(table, self.column, f"dense feature {self.name!r}")
            self.moments.update(_transform(values, self.normalize))

    def _ids(self) -> Vocabulary | HashedIds:
        if isinstance(self.counter, FingerprintCounter):
            known = self.counter.known(self.min_count)
            return HashedIds(int(self.buckets), known, self.name, self.counter.id_type)
        return Vocabulary.from_counts(self.counter, self.min_count)

    def finish(self) -> Any:
        if self.kind == "categorical":
            return self._ids()
        if self.kind == "multi_hot":
            return BagEncoder(self._ids(), self.max_length or max(self.longest, 1), self.separator)
        if self.kind == "text":
            return TextColumn(tuple(self.texts))
        return DenseStats.from_moments(self.moments, self.normalize, self.missing)


def fit_encoders(features: Mapping[str, Any], tables: Sequence[Table]) -> dict[str, Any]:
    """Every feature's encoder from whole tables (train, validation, test)."""
    fitters = {name: FeatureFitter(name, dict(spec)) for name, spec in features.items()}
    for split, table in zip(("train", "validation", "test"), tables, strict=False):
        for fitter in fitters.values():
            fitter.update(table, split)
    return {name: fitter.finish() for name, fitter in fitters.items()}


def encode_feature(name: str, enc: Any, column: str, table: Table) -> dict[str, np.ndarray]:
    """The model's input columns for one feature: its own, and a bag's mask."""
    if isinstance(enc, BagEncoder):
        ids, mask = enc.encode(table_column(table, column, f"multi_hot feature {name!r}"))
        return {name: ids, bag_mask_name(name): mask}
    return {name: _encode_column(name, enc, column, table)}


def _encode_column(name: str, enc: Any, column: str, table: Table) -> np.ndarray:
    if isinstance(enc, DenseStats):
        values = _numbers(table, column, f"dense feature {name!r}")
        if np.isinf(values).any():
            row = int(np.argmax(np.isinf(values)))
            raise DataFormatError(
                f"{table.where(row)}, column {column!r}: {values[row]} is not finite (dense "
                f"feature {name!r})"
            )
        if enc.missing == "error" and np.isnan(values).any():
            row = int(np.argmax(np.isnan(values)))
            raise DataFormatError(
                f"{table.where(row)}, column {column!r}: missing value (features.{name}.missing"
                " is 'error')"
            )
        return enc.encode(values)
    values = table_column(table, column, f"feature {name!r}")
    if isinstance(enc, HashedIds):
        rows = np.zeros(len(values), np.int32)
        present, ids = _hash_input(values, enc.id_type)
        if present.size:
            rows[present] = enc.encode(ids)
        return rows
    return enc.encode(values)


def label_column(task: str, spec: Mapping[str, Any], table: Table) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, mask)`` of one task: mask 0 where the label's source is missing."""
    kind = spec.get("kind", "binary")
    column = spec.get("column") or task
    values = table_column(table, column, f"task {task!r}")
    if kind == "multilabel":
        return _multilabel(task, spec, column, values, table)
    missing = _missing_mask(values)
    what = f"task {task!r}"
    mapping = {str(raw): float(label) for raw, label in (spec.get("value_map") or ())}
    if mapping:
        keys = _as_keys(values)
        out = np.zeros(len(values))
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k not in mapping:
                raise DataFormatError(
                    f"{table.where(i)}, column {column!r}: {k!r} is not in data.labels.{task}"
                    f".value_map {sorted(mapping)}"
                )
            out[i] = float(mapping[k])
    elif spec.get("equals", "") not in ("", None):
        target = str(spec["equals"])
        out = np.array([k == target for k in _as_keys(values)], np.float64)
    elif spec.get("threshold") is not None:
        out = (np.nan_to_num(_numbers(table, column, what)) > float(spec["threshold"])).astype(
            float
        )
    else:
        out = np.nan_to_num(_numbers(table, column, what))
    present = ~missing
    if kind == "binary":
        bad = present & ~np.isin(out, (0.0, 1.0))
        allowed = "0 or 1 (derive one with data.labels.<task>.threshold, equals or value_map)"
    elif kind == "multiclass":
        classes = int(spec.get("num_classes", 0))
        bad = present & ~((out >= 0) & (out < classes) & (out == np.round(out)))
        allowed = f"a class id 0..{classes - 1}"
    elif kind == "regression":
        low, high = spec.get("min", None), spec.get("max", None)
        bad = present & ~np.isfinite(out)
        if low is not None:
            bad |= present & (out < float(low))
        if high is not None:
            bad |= present & (out > float(high))
        allowed = f"a number in [{low}, {high}]"
    else:
        raise ConfigError(f"data.labels.{task}.kind: {kind!r}; valid: {LABEL_KINDS}")
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFormatError(
            f"{table.where(row)}, column {column!r}: label {_show(values[row])} of {kind} task "
            f"{task!r} is not {allowed}"
        )
    dtype = np.int32 if kind == "multiclass" else np.float32
    return out.astype(dtype), present.astype(np.float32)


def num_classes(spec: Mapping[str, Any]) -> int:
    """Classes of a multiclass task, or labels of a multilabel one (its ``classes`` names,
    else ``num_classes`` integer ids); 0 for other kinds."""
    kind = spec.get("kind", "binary")
    if kind == "multilabel" and spec.get("classes"):
        return len(spec["classes"])
    return int(spec.get("num_classes", 0)) if kind in ("multiclass", "multilabel") else 0


def _multilabel(
    task: str, spec: Mapping[str, Any], column: str, values: np.ndarray, table: Table
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) 0/1 labels from a list column of class names (``classes``) or ids;
    a missing list masks the row; an empty one, or the cell ``no_labels``, is a row with no
    label on."""
    names = [str(c) for c in spec.get("classes") or ()]
    count = num_classes(spec)
    index = {c: i for i, c in enumerate(names or map(str, range(count)))}
    labels = np.zeros((len(values), count), np.float32)
    present = np.ones(len(values), np.float32)
    nothing = spec.get("no_labels", "none")
    for r, elements in enumerate(_lists(values, spec.get("separator", "|") or "|")):
        if nothing and elements == (nothing,):
            continue
        if elements is None:
            present[r] = 0.0
            continue
        for e in elements:
            if e not in index:
                allowed = f"one of {names}" if names else f"a class id 0..{count - 1}"
                raise DataFormatError(
                    f"{table.where(r)}, column {column!r}: {e!r} of multilabel task {task!r} "
                    f"is not {allowed}"
                )
            labels[r, index[e]] = 1.0
    return labels, present


def _split_one_source(table: Table, data: Mapping[str, Any], seed: int) -> list[Table]:
    rule = data.get("split", "random")
    val, test = float(data.get("validation_fraction", 0.1)), float(data.get("test_fraction", 0.1))
    if rule == "random":
        parts = random_split(len(table), val, test, np.random.default_rng(seed))
    elif rule in ("time", "user"):
        column = data.get("split_column", "")
        if not column:
            raise ConfigError(f"data.split={rule!r} needs data.split_column")
        if rule == "time":
            t = _numbers(table, column, "data.split_column")
            order = np.argsort(t, kind="stable")
            n_test, n_val = round(len(t) * test), round(len(t) * val)
            cut_val, cut_test = len(t) - n_test - n_val, len(t) - n_test
            parts = (order[:cut_val], order[cut_val:cut_test], order[cut_test:])
            parts = tuple(np.sort(p) for p in parts)
        else:  # every row of a user in one split
            users = np.unique(
                _as_keys(table_column(table, column, "data.split_column")).astype(str),
                return_inverse=True,
            )[1]
            u_train, u_val, u_test = random_split(
                users.max() + 1, val, test, np.random.default_rng(seed)
            )
            which = np.zeros(users.max() + 1, np.int8)
            which[u_val], which[u_test] = 1, 2
            parts = tuple(np.flatnonzero(which[users] == k) for k in range(3))
    else:
        raise ConfigError(f"data.split: {rule!r}; valid: {SPLIT_RULES}")
    return [table.take(p) for p in parts]


def _same_columns(table: Table, train: Table) -> None:
    if list(table.columns) != list(train.columns):
        raise DataFormatError(
            f"{table.files[0]}: columns {list(table.columns)} differ from the train file "
            f"{train.files[0]}'s {list(train.columns)}"
        )


def load_tables(data: Mapping[str, Any], seed: int) -> list[Table]:
    """Train, validation and test tables: from their own files, or one source split by rule
    (validation carved from train with the seed when only train and test are given)."""
    options = dict(data)
    where = (data.get("data_dir", ""), data.get("hint", ""))
    if data.get("file"):
        if any(data.get(s) for s in ("train", "validation", "test")):
            raise ConfigError("set data.file or data.train/validation/test, not both")
        return _split_one_source(
            read_files(expand_paths(data["file"], "data.file", *where), options), data, seed
        )
    if not data.get("train") or not data.get("test"):
        raise ConfigError("data.train and data.test (or data.file) must name files")
    train = read_files(expand_paths(data["train"], "data.train", *where), options)
    test = read_files(expand_paths(data["test"], "data.test", *where), options)
    _same_columns(test, train)
    if data.get("validation"):
        validation = read_files(
            expand_paths(data["validation"], "data.validation", *where), options
        )
        _same_columns(validation, train)
    else:
        fraction = float(data.get("validation_fraction", 0.1))
        keep, held, _ = random_split(len(train), fraction, 0.0, np.random.default_rng(seed))
        train, validation = train.take(keep), train.take(held)
    return [train, validation, test]


def task_specs(labels: Mapping[str, Any]) -> tuple[TaskSpec, ...]:
    """The tasks ``data.labels`` defines, their kinds and class counts checked."""
    if not labels:
        raise ConfigError("data.labels must define at least one task (see configs/files.py)")
    tasks = []
    for task, spec in labels.items():
        spec = dict(spec)
        kind = spec.get("kind", "binary")
        if kind not in LABEL_KINDS:
            raise ConfigError(f"data.labels.{task}.kind: {kind!r}; valid: {LABEL_KINDS}")
        if kind in ("multiclass", "multilabel") and num_classes(spec) < 2:
            raise ConfigError(
                f"data.labels.{task} ({kind}) needs at least 2 classes: set num_classes"
                + (" or classes (their names)" if kind == "multilabel" else "")
            )
        tasks.append(TaskSpec(task, kind, num_classes(spec)))
    return tuple(tasks)


def feature_specs(encoders: Mapping[str, Any]) -> tuple[FeatureSpec, ...]:
    """What the model is told of each encoded feature."""
    specs = []
    for name, enc in encoders.items():
        if isinstance(enc, DenseStats):
            specs.append(FeatureSpec(name, 0, dense_dim=1))
        elif isinstance(enc, BagEncoder):
            specs.append(FeatureSpec(name, enc.rows, bag_size=enc.max_length))
        else:
            specs.append(FeatureSpec(name, enc.rows))
    return tuple(specs)


def key_strings(values: np.ndarray) -> np.ndarray:
    """Category values as a str array ("" where missing): for hashing whole columns."""
    return np.array(["" if k is None else k for k in _as_keys(values)], dtype=str)


def build_file_dataset(
    seed: int, features: Mapping[str, Any] | None = None, **data: Any
) -> MultiTaskDataset:
    """A ``MultiTaskDataset`` (with its ``FileEncoding``) from the files ``data`` names and
    the feature schema ``features``."""
    if not features:
        raise ConfigError("a file dataset needs a features section (see configs/files.py)")
    labels = dict(data.pop("labels", {}) or {})
    tasks = task_specs(labels)
    tables = load_tables(data, seed)
    encoders = fit_encoders(features, tables)
    columns = {name: dict(spec).get("column") or name for name, spec in features.items()}
    for name, enc in encoders.items():
        if isinstance(enc, HashedIds) and enc.collisions():
            log.info("feature %s: %d train ids share a hash bucket", name, enc.collisions())
    splits = []
    for split_name, table in zip(("train", "validation", "test"), tables, strict=True):
        if len(table) == 0:
            raise DataFormatError(f"the {split_name} split is empty (files {table.files})")
        feats = {}
        for n, e in encoders.items():
            feats.update(encode_feature(n, e, columns[n], table))
        ys, masks = {}, {}
        for task, spec in labels.items():
            ys[task], masks[task] = label_column(task, dict(spec), table)
            if split_name == "train" and not masks[task].any():
                raise DataFormatError(
                    f"task {task!r}: every train row's label (column "
                    f"{dict(spec).get('column') or task!r}) is missing"
                )
        splits.append(Split(feats, ys, masks))
    return MultiTaskDataset(
        name=data.get("dataset_name", "files") or "files",
        features=feature_specs(encoders),
        tasks=tasks,
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        encoding=FileEncoding(encoders, columns),
        texts={n: e.texts for n, e in encoders.items() if isinstance(e, TextColumn)},
    )


def data_config(**overrides: Any) -> Any:
    """A ``data`` section for a file dataset with every reading option at its default (so
    each is on the command line); ``overrides`` set some, ``labels`` among them."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            name="files",
            dataset_name="files",  # the name results.json and reports give the dataset
            data_dir="",  # relative paths below are under it ('' = the working directory)
            hint="",  # appended to "no such file" errors: what the files are, where from
            train="",  # a path, a glob, or a comma-separated list of either
            validation="",  # '' = carved from train with the seed (validation_fraction)
            test="",
            file="",  # or: one source, split by data.split
            split="random",  # random (by seed), time (by split_column), user (by split_column)
            split_column="",
            validation_fraction=0.1,
            test_fraction=0.1,  # with data.file
            format="auto",  # auto (by file suffix), csv, parquet
            delimiter=",",
            header=True,  # CSV: the first line names the columns; else data.columns does
            columns=(),
            missing_values=DEFAULT_MISSING,
            labels=ml_collections.ConfigDict(),
            # A directory `python -m mtl_jax.data.prepare` wrote from this config: train
            # streams from its shards (mtl_jax/data/streaming.py); '' = read the files.
            prepared="",
            window_blocks=64,  # prepared data: blocks shuffled together per window
        )
    )
    labels = overrides.pop("labels", {})
    c.update(overrides)
    for task, spec in labels.items():
        c.labels[task] = label_config(**spec)
    return c


def label_config(**spec: Any) -> Any:
    """One task's label: ``kind`` (binary, regression, multiclass, multilabel), the source
    ``column`` (default: the task's name) and at most one derivation: ``threshold`` (label =
    value > threshold), ``equals`` (label = value == equals), ``value_map`` (a map from raw
    value to label). ``num_classes`` for multiclass, ``min``/``max`` bounds for regression;
    multilabel: a list column (or strings split at ``separator``) of class names
    (``classes``) or ids (``num_classes``). A missing source value masks the task for that
    row."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            kind="binary",
            column="",
            threshold=ml_collections.config_dict.placeholder(float),
            equals="",
            value_map=(),  # ((raw value, label), ...): raw values may hold dots
            num_classes=0,
            classes=(),  # multilabel: the class names, in output order
            separator="|",  # multilabel: between a CSV cell's class names
            no_labels="none",  # multilabel: a cell saying "no label on" (empty = missing)
            min=ml_collections.config_dict.placeholder(float),
            max=ml_collections.config_dict.placeholder(float),
        )
    )
    value_map = spec.pop("value_map", {})
    c.update(spec)
    c.value_map = tuple((str(raw), float(label)) for raw, label in dict(value_map).items())
    return c


def feature_config(**spec: Any) -> Any:
    """One input feature: ``kind`` (categorical, dense, multi_hot, text), the source
    ``column`` (default: the feature's name); categorical and multi_hot: ``hash_buckets``
    (None = a vocabulary) and ``min_count``; multi_hot: ``separator`` (between a CSV cell's
    elements) and ``max_length`` (0 = the longest train list); dense: ``normalize`` (none,
    standard, log1p) and ``missing`` (mean, zero, error); text: nothing more (list it in
    ``text.features``)."""
    import ml_collections

    c = ml_collections.ConfigDict(
        dict(
            kind="categorical",
            column="",
            hash_buckets=ml_collections.config_dict.placeholder(int),
            min_count=1,
            separator="|",
            max_length=0,
            normalize="none",
            missing="mean",
        )
    )
    c.update(spec)
    return c
