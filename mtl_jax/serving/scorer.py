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

from mtl_jax.data.schema import bag_mask_name
from mtl_jax.errors import UserError
from mtl_jax.serving.export import FILES, FORMAT_VERSION, MANIFEST, unflatten_params
from mtl_jax.serving.ranking import Fusion, attribute_sets, parse_diversity, top_k
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
        self.fusion = Fusion.parse(manifest["fusion"], self.tasks)
        self.max_candidates = 10_000
        self.catalogue = manifest.get("catalogue")
        item_features = self.catalogue["item_features"] if self.catalogue else []
        self.context_features = [f for f in manifest["features"] if f not in item_features]
        if self.catalogue:
            with np.load(directory / "catalogue.npz") as f:
                self._items = {
                    k.partition("/")[2]: f[k] for k in f.files if k.startswith("feature/")
                }
                self._attributes = f["attributes"]
                self._known = np.zeros(len(self._attributes), bool)
                self._known[f["items"]] = True
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

    @property
    def catalogue_items(self) -> np.ndarray:
        """The item ids a ranking request may name (empty without a catalogue)."""
        return np.flatnonzero(self._known) if self.catalogue else np.zeros(0, np.int64)

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

    def _catalogue_inputs(self, context: Mapping[str, Any], ids: list[Any]) -> tuple[dict, Any]:
        if not self.catalogue:
            raise RequestError(
                "this model has no item catalogue: give each candidate's item features inline "
                "(candidates as objects)"
            )
        for i, item in enumerate(ids):
            ok = isinstance(item, int) and not isinstance(item, bool)
            if not (ok and 0 <= item < len(self._known) and self._known[item]):
                raise RequestError(f"candidate {i}: {item!r} is not an item of the catalogue")
        index = np.asarray(ids, np.int64)
        inputs = {
            k: np.repeat(v, len(ids), 0)
            for k, v in self.rows.encode([context], self.context_features).items()
        }
        inputs.update({name: column[index] for name, column in self._items.items()})
        return inputs, self._attributes[index]

    def rank(
        self,
        context: Mapping[str, Any],
        candidates: Sequence[Any],
        k: int = 10,
        fusion: Mapping[str, Any] | None = None,
        diversity: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` best candidates for ``context`` (the user's and context features) in one
        batched call: candidates are item ids of the export's catalogue, or objects holding
        the item-side features inline (and any field a fusion rule multiplies by). Scores
        fuse the task predictions (``fusion``, default the export's; see
        mtl_jax/serving/ranking.py); ``diversity`` ``{"lambda": 0.7, "attribute": feature}``
        re-ranks by MMR on the catalogue's item attributes or a feature's ids."""
        if not isinstance(context, Mapping):
            raise RequestError(
                f"context: expected an object of features, got {type(context).__name__}"
            )
        if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
            raise RequestError("candidates: expected a list of item ids or objects")
        if not candidates or len(candidates) > self.max_candidates:
            raise RequestError(
                f"candidates: {len(candidates)} given; between 1 and {self.max_candidates} allowed"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError(f"k: {k!r} is not a positive integer")
        rule = self.fusion if fusion is None else Fusion.parse(fusion, self.tasks)
        inline = [isinstance(c, Mapping) for c in candidates]
        times = None
        if all(inline):
            inputs = self.rows.encode([{**context, **c} for c in candidates])
            attributes = None
            if rule.times:
                times = rule.times_of(candidates)
        elif not any(inline):
            if rule.times:
                raise RequestError(
                    f"fusion.times={rule.times!r} needs candidates as objects carrying it"
                )
            inputs, attributes = self._catalogue_inputs(context, list(candidates))
        else:
            raise RequestError("candidates: all item ids or all objects, not a mix")
        lam, attribute = parse_diversity(diversity, list(self.rows.encoders))
        if attribute:
            attributes = attribute_sets(inputs[attribute], inputs.get(bag_mask_name(attribute)))
        elif attributes is None and lam < 1.0:
            raise RequestError("diversity: name an attribute feature (no catalogue attributes)")
        predictions = self.score_inputs(inputs)
        scores = rule(predictions, times)
        order = top_k(scores, k, attributes, float(lam))
        return [
            {
                "item": candidates[i] if not inline[i] else int(i),
                "score": float(scores[i]),
                "predictions": {t: predictions[t][i].tolist() for t in self.tasks},
            }
            for i in order
        ]
