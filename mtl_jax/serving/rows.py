"""Raw rows -> the model's input columns, as training encoded them.

An export's ``features/features.json`` lists every column the model reads and how a raw
value becomes it. File datasets save their fitted encoders there (mtl_jax/data/files.py:
vocabularies, hashing, normalisation statistics, bags, texts) and a request's rows go
through the very same encoding functions as the training files did; the built-in datasets
(simulators, MovieLens) take their ids as they are (``kind: "id"``: an integer in
``[0, rows)``) and dense vectors of a fixed width (``kind: "vector"``).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax.data import files
from mtl_jax.data.hashing import HashedIds
from mtl_jax.errors import DataFormatError, UserError


class RequestError(UserError, ValueError):
    """A request the model cannot score: the message names the row, feature and problem
    (an HTTP server answers it with a 4xx)."""


def encoders_from_json(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    """``{feature: {"column": ..., "encoder": ...}}`` from a saved ``features.json``."""
    saved = json.loads((directory / "features.json").read_text())
    out = {}
    for name, entry in saved.items():
        kind = entry["kind"]
        if kind in ("id", "vector"):
            enc: Any = entry
        elif kind == "dense":
            enc = files.DenseStats(
                entry["normalize"], entry["missing"], entry["mean"], entry["std"]
            )
        elif kind == "text":
            enc = files.TextColumn(tuple(entry["texts"]))
        else:
            if "hash_buckets" in entry:
                ids: Any = HashedIds.load(directory / f"{name}.hash.npz")
            else:
                ids = files.Vocabulary(tuple(entry["vocabulary"]))
            enc = (
                files.BagEncoder(ids, entry["max_length"], entry["separator"])
                if kind == "multi_hot"
                else ids
            )
        out[name] = {"column": entry.get("column", name), "kind": kind, "encoder": enc}
    return out


def builtin_features_json(features: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``features.json`` entries of a built-in dataset's features (``FeatureSpec``s)."""
    return {
        f.name: (
            {"column": f.name, "kind": "vector", "dim": f.dense_dim}
            if f.is_dense
            else {"column": f.name, "kind": "id", "rows": f.vocab_size}
        )
        for f in features
    }


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RowEncoder:
    """Encodes a list of raw rows (dicts keyed by the training data's column names)."""

    def __init__(self, encoders: Mapping[str, dict[str, Any]], inputs: Sequence[str]):
        self.encoders = {name: encoders[name] for name in inputs}

    @property
    def columns(self) -> list[str]:
        """The raw columns a row must carry."""
        return sorted({e["column"] for e in self.encoders.values()})

    def encode(
        self, rows: Sequence[Mapping[str, Any]], features: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The input columns of ``features`` (default: all the model reads) for ``rows``."""
        encoders = self.encoders if features is None else {f: self.encoders[f] for f in features}
        needed = sorted({e["column"] for e in encoders.values()})
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) or not rows:
            raise RequestError("expected a non-empty list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise RequestError(
                    f"row {i}: expected an object of features, got {type(row).__name__}"
                )
            missing = [c for c in needed if c not in row]
            if missing:
                raise RequestError(f"row {i}: missing features {missing}; a row needs {needed}")
        out: dict[str, np.ndarray] = {}
        for name, spec in encoders.items():
            column = spec["column"]
            values = [row[column] for row in rows]
            if spec["kind"] == "id":
                out[name] = self._ids(name, values, spec["encoder"]["rows"])
            elif spec["kind"] == "vector":
                out[name] = self._vectors(name, values, spec["encoder"]["dim"])
            else:
                out.update(self._file_feature(name, spec, values))
        return out

    @staticmethod
    def _ids(name: str, values: list[Any], rows: int) -> np.ndarray:
        for i, v in enumerate(values):
            if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < rows):
                raise RequestError(f"row {i}, feature {name!r}: {v!r} is not an id in [0, {rows})")
        return np.asarray(values, np.int32)

    @staticmethod
    def _vectors(name: str, values: list[Any], dim: int) -> np.ndarray:
        for i, v in enumerate(values):
            if not (isinstance(v, list) and len(v) == dim and all(map(finite_number, v))):
                raise RequestError(f"row {i}, feature {name!r}: expected {dim} finite numbers")
        return np.asarray(values, np.float32)

    @staticmethod
    def _file_feature(name: str, spec: dict[str, Any], values: list[Any]) -> dict[str, np.ndarray]:
        kind, column = spec["kind"], spec["column"]
        for i, v in enumerate(values):
            ok = v is None or isinstance(v, str) or finite_number(v)
            ok = ok or (kind == "multi_hot" and isinstance(v, list))
            if isinstance(v, bool) or not ok:
                raise RequestError(
                    f"row {i}, feature {name!r} (column {column!r}): {v!r} is not a "
                    + ("list, " if kind == "multi_hot" else "")
                    + "string or finite number"
                )
        array = np.empty(len(values), object)
        for i, v in enumerate(values):  # one by one: a list must stay one element
            array[i] = v
        table = files.Table(
            {column: array}, ["request"], np.zeros(len(values), np.int32),
            np.arange(len(values)), unit="row",
        )  # fmt: skip
        try:
            return files.encode_feature(name, spec["encoder"], column, table)
        except DataFormatError as e:
            raise RequestError(str(e)) from None
