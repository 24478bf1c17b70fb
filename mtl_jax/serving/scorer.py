"""Scoring with an exported model (mtl_jax/serving/export.py), without the training data,
the config or the model code.

    scorer = Scorer.load("models/ecommerce")
    scorer.score([{"user_id": 3, "item_id": 17, ...}])   # {task: (rows, ...) array}

Batches are padded to the next power of two before they reach the compiled function, so a
server sees a handful of compiles (one per size bucket), not one per request size.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.serving.export import FILES, FORMAT_VERSION, MANIFEST, unflatten_params
from mtl_jax.serving.rows import RequestError, RowEncoder, encoders_from_json


class ModelDirError(UserError, FileNotFoundError):
    """An export directory that is incomplete or from an incompatible version."""


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Scorer:
    """A loaded export: ``score`` raw rows, ``score_inputs`` already encoded columns."""

    def __init__(self, directory: pathlib.Path, manifest: dict, exported: Any, params: Any):
        self.directory, self.manifest = directory, manifest
        self.tasks = {t["name"]: t for t in manifest["tasks"]}
        self.inputs = {
            k: (np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in manifest["inputs"].items()
        }
        self.rows = RowEncoder(encoders_from_json(directory / "features"), manifest["features"])
        self._params = jax.device_put(params)
        self._call = jax.jit(exported.call)

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> Scorer:
        directory = pathlib.Path(directory)
        missing = [f for f in FILES if not (directory / f).is_file()]
        if missing:
            raise ModelDirError(
                f"{directory} is not a complete export: missing {missing} (write one with "
                "`python serve.py export --workdir=W --out=DIR`)"
            )
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ModelDirError(
                f"{directory} is export format {manifest.get('format')}; this code reads "
                f"format {FORMAT_VERSION}: export the run again"
            )
        platform = jax.default_backend()
        if platform not in manifest["platforms"]:
            raise ModelDirError(
                f"{directory} was exported for {manifest['platforms']}, not {platform}: export "
                f"with --platforms={platform}"
            )
        exported = jax.export.deserialize(bytearray((directory / "scorer.jaxexport").read_bytes()))
        with np.load(directory / "params.npz") as f:
            flat = {k: f[k] for k in f.files}
        for key, dtype in manifest["param_dtypes"].items():
            if dtype == "bfloat16":
                flat[key] = flat[key].view(jax.numpy.bfloat16)
        return cls(directory, manifest, exported, unflatten_params(flat))

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def score_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Predictions for encoded input columns (what the training split holds)."""
        missing = sorted(set(self.inputs) - set(inputs))
        if missing:
            raise RequestError(f"inputs lack {missing}; the model reads {sorted(self.inputs)}")
        n = len(next(iter(inputs.values())))
        padded = {}
        for name, (dtype, shape) in self.inputs.items():
            column = np.asarray(inputs[name], dtype)
            if column.shape != (n, *shape):
                raise RequestError(f"input {name!r}: shape {column.shape}, expected {(n, *shape)}")
            pad = _bucket(n) - n
            padded[name] = (
                np.concatenate([column, np.repeat(column[:1], pad, 0)]) if pad else column
            )
        out = self._call(self._params, padded)
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def score(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Per-task predictions for raw rows (values as the training data has them)."""
        return self.score_inputs(self.rows.encode(rows))
