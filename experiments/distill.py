"""Knowledge distillation, measured: a large teacher, a small student trained on labels only,
and the same student distilled from the teacher's soft targets.

  python experiments/distill.py --config=configs/ecommerce.py --workdir=runs/distill

Teacher: MMoE with 16 experts of (256, 128) units. Student: Shared-Bottom with one 16-unit
layer and 8-unit towers. For each: test metrics, parameter count and inference throughput
(examples/s of the jitted forward pass at batch 4096, median of 5 timings). Every run is
resumable (its own workdir). Writes ``distill.json`` and ``distill.md`` in the workdir.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mtl_jax import benchmark, parallel, reporting
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the three runs and the summary.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Weight of the soft-target loss.")
_TEMPERATURE = flags.DEFINE_float("temperature", 2.0, "Softmax temperature of the targets.")
flags.mark_flags_as_required(["config", "workdir"])

TEACHER = dict(trunk="mmoe", num_experts=16, trunk_hidden=(256, 128), tower_hidden=(64,))
STUDENT = dict(trunk="shared_bottom", trunk_hidden=(16,), tower_hidden=(8,))


def _variant(base, model: dict, teacher_workdir: str = ""):
    config = base.copy_and_resolve_references()
    config.model.update(model)
    config.distill.update(
        teacher_workdir=teacher_workdir, alpha=_ALPHA.value, temperature=_TEMPERATURE.value
    )
    return config


def inference_examples_per_s(config, workdir: pathlib.Path, batch_size: int = 4096) -> dict:
    """Parameter count and jitted-forward throughput of a finished run's best parameters."""
    dataset = load_dataset(config.data, config.seed)
    config = config.copy_and_resolve_references()
    config.distill.teacher_workdir = ""  # the student alone is what serves
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    params = trainer.best_params(workdir)
    rows = np.arange(batch_size) % len(dataset.test)
    features = {k: v[rows] for k, v in dataset.test.features.items()}
    forward = jax.jit(lambda p, f: trainer.model.apply({"params": p}, f, train=False))
    seconds = benchmark.median_seconds(lambda: forward(params, features), repeats=5, calls=10)
    return {
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "inference_examples_per_s": batch_size / seconds,
    }


def main(argv):
    del argv
    root = pathlib.Path(_WORKDIR.value)
    base = _CONFIG.value
    runs = {
        "teacher": _variant(base, TEACHER),
        "student": _variant(base, STUDENT),
        "student distilled": _variant(base, STUDENT, str(root / "teacher")),
    }
    summary = {"commit": reporting.git_commit(), "alpha": _ALPHA.value,
               "temperature": _TEMPERATURE.value, "runs": {}}  # fmt: skip
    for name, config in runs.items():
        workdir = root / name.replace(" ", "_")
        print(f"== {name}", file=sys.stderr)
        results = train_and_evaluate(config, str(workdir))
        if results is None:
            raise SystemExit(f"{name} stopped early; rerun to resume")
        summary["runs"][name] = {
            "test": results["test"],
            "commit": results["commit"],
            **inference_examples_per_s(config, workdir),
        }
    columns = [
        (t, m) for t, ms in summary["runs"]["teacher"]["test"].items() for m in ms if m != "loss"
    ]
    rows = [
        [name, f"{r['params']:,}", f"{r['inference_examples_per_s']:,.0f}"]
        + [f"{r['test'][t][m]:.4f}" for t, m in columns]
        for name, r in summary["runs"].items()
    ]
    text = "\n".join(
        [
            f"# Distillation on {base.data.name} (alpha {_ALPHA.value}, temperature "
            f"{_TEMPERATURE.value})",
            "",
            *reporting.markdown_table(
                ["model", "parameters", "inference ex/s", *(f"{t} {m}" for t, m in columns)], rows
            ),
            "",
            f"Commit {reporting.short_commit(summary['commit'])}; command: "
            f"`python experiments/distill.py {' '.join(sys.argv[1:])}`",
        ]
    )
    reporting.write_json(root / "distill.json", summary)
    (root / "distill.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
