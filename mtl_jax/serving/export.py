"""Export a trained run as a self-contained scorer directory.

    python serve.py export --workdir=runs/ecommerce --out=models/ecommerce

What the directory holds (``MANIFEST`` lists it; ``Scorer.load`` reads it without the
training data or the model code's config):

- ``scorer.jaxexport``: ``(params, inputs) -> {task: prediction}`` serialised with
  ``jax.export``, its batch dimension symbolic (one artifact for any batch size);
  predictions are what a user reads off each head (``tasks.predict``): a probability
  (binary), a value (regression), class probabilities (multiclass), label probabilities
  (multilabel);
- ``params.npz``: the best checkpoint's parameters, flattened by key path (bfloat16 leaves
  stored as their bits, their dtype in the manifest); text-feature tables among them;
- ``features/``: how raw values become the model's inputs (mtl_jax/serving/rows.py);
- ``catalogue.npz`` where the dataset has an item catalogue: each item-side input by item
  id and the items' attributes, so a ranking request may name candidates by id;
- ``manifest.json``: format version, inputs (name, dtype, per-row shape), tasks (kind,
  classes, output), the run's config, commit, versions, best step.

The directory appears complete or not at all (written under a temporary name, renamed).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl_jax import configlib, paths, reporting
from mtl_jax import tasks as tasks_lib
from mtl_jax.errors import UserError
from mtl_jax.serving.ranking import default_fusion
from mtl_jax.serving.rows import builtin_features_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("scorer.jaxexport", "params.npz", "features/features.json", MANIFEST)
OUTPUTS = {
    "binary": "probability",
    "regression": "value",
    "multiclass": "class_probabilities",
    "multilabel": "label_probabilities",
}


class ExportError(UserError, FileNotFoundError):
    """A workdir that cannot be exported (no best checkpoint, no config.json)."""


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """``{"embedding/user_id/embedding": array, ...}`` of a nested parameter dict."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(jax.device_get(leaf))
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def model_inputs(trainer: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{column: (dtype, per-row shape)}`` of every input the model reads."""
    return {k: (v.dtype.str, v.shape[1:]) for k, v in trainer.input_sample.items()}


def scoring_function(trainer: Any):
    model, tasks = trainer.model, trainer.tasks

    def score(params: Any, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
        logits = model.apply({"params": params}, inputs, train=False)
        return {t.name: tasks_lib.predict(t, logits[t.name]) for t in tasks}

    return score


def _save_catalogue(trainer: Any, directory: pathlib.Path) -> dict[str, Any] | None:
    """``catalogue.npz`` (each item-side input by item id, the item ids, their attributes)
    for datasets that have an item catalogue; what ranking by candidate id reads."""
    cat = trainer.dataset.catalogue
    if cat is None:
        return None
    inputs = set(model_inputs(trainer))
    item_inputs = [name for name in cat.item_features if name in inputs]
    np.savez(
        directory / "catalogue.npz",
        items=np.asarray(cat.items),
        attributes=np.asarray(cat.item_attributes, bool),
        **{f"feature/{name}": np.asarray(cat.item_features[name]) for name in item_inputs},
    )
    return {"item_key": cat.item_key, "item_features": item_inputs}


def export_trainer(
    trainer: Any,
    params: Any,
    out: str | pathlib.Path,
    *,
    best_step: int | None = None,
    platforms: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes the scorer of ``trainer``'s model with ``params`` into ``out`` (new)."""
    out = pathlib.Path(out)
    if out.exists():
        raise ExportError(f"--out {out} exists; an export is never written over: pick a new one")
    inputs = model_inputs(trainer)
    (batch,) = jax.export.symbolic_shape("batch")
    params = jax.device_get(params)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract_inputs = {
        k: jax.ShapeDtypeStruct((batch, *shape), jnp.dtype(d)) for k, (d, shape) in inputs.items()
    }
    exported = jax.export.export(jax.jit(scoring_function(trainer)), platforms=platforms)(
        abstract_params, abstract_inputs
    )
    flat = flatten_params(params)
    dtypes = {k: str(v.dtype) for k, v in flat.items()}
    stored = {k: (v.view(np.uint16) if v.dtype == jnp.bfloat16 else v) for k, v in flat.items()}
    with paths.staged_directory(out) as staging:
        (staging / "scorer.jaxexport").write_bytes(exported.serialize())
        np.savez(staging / "params.npz", **stored)
        features = staging / "features"
        if trainer.dataset.encoding is not None:
            trainer.dataset.encoding.save(features)
        else:
            features.mkdir()
            entries = builtin_features_json(trainer.dataset.features)
            (features / "features.json").write_text(json.dumps(entries, indent=1))
        config = trainer.config
        catalogue = _save_catalogue(trainer, staging)
        ranking = config.get("ranking", {})
        manifest = {
            "format": FORMAT_VERSION,
            "inputs": {k: {"dtype": d, "shape": list(s)} for k, (d, s) in inputs.items()},
            "features": list(config.input_features)
            + [n for n in config.text.features if n not in config.input_features],
            "tasks": [
                {
                    "name": t.name,
                    "kind": t.kind,
                    "num_classes": t.num_classes,
                    "output": OUTPUTS[t.kind],
                }
                for t in trainer.tasks
            ],  # fmt: skip
            "catalogue": catalogue,
            "fusion": default_fusion(
                dict(ranking), {t.name: {"kind": t.kind} for t in trainer.tasks}
            ).to_json(),
            "param_dtypes": dtypes,
            "platforms": list(exported.platforms),
            "dataset": trainer.dataset.name,
            "best_step": best_step,
            "config": configlib.to_dict(config),
            "commit": reporting.git_commit(),
            "versions": {"jax": jax.__version__, "numpy": np.__version__},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


def export_workdir(
    workdir: str | pathlib.Path, out: str | pathlib.Path, platforms: Sequence[str] | None = None
) -> pathlib.Path:
    """Rebuilds the run of ``workdir`` (its config.json; its dataset) and exports its best
    checkpoint."""
    from mtl_jax import parallel
    from mtl_jax.checkpoint import Checkpointer
    from mtl_jax.trainer import Trainer, _tuples, load_run_dataset

    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if out.exists():
        raise ExportError(f"--out {out} exists; an export is never written over: pick a new one")
    path = workdir / "config.json"
    if not path.is_file():
        raise ExportError(f"{workdir} has no config.json: not a run's workdir (train there first)")
    config = ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
    if config.model.trunk == "llm":
        raise ExportError(
            f"{workdir} trained an LM trunk (model.trunk='llm'), whose inputs are prompts "
            "built from the training history; serving does not build them yet, so it cannot "
            "be exported"
        )
    ckpt = Checkpointer(workdir)
    try:
        if not ckpt.best_steps():
            raise ExportError(
                f"{workdir} has no best checkpoint (under {workdir / 'best'}); a run writes "
                "one at its first evaluation"
            )
        dataset = load_run_dataset(config)
        trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
        step, params = ckpt.restore_best_with_step(trainer.abstract_state.params)
    finally:
        ckpt.close()
    return export_trainer(trainer, params, out, best_step=step, platforms=platforms)
