"""k-fold cross-validation on the train split: every fold trained, validation metrics
aggregated as mean +- std; the test split is never used to choose anything.

  python experiments/cross_validate.py --config=configs/movielens.py --folds=5 \\
      --workdir=runs/cv/movielens [--config.model.trunk=shared_bottom ...]

Each fold runs ``train_and_evaluate`` in ``<workdir>/fold_<i>`` (resumable: a finished fold
is re-reported, an interrupted one resumes from its checkpoint). Writes ``cv.json`` and
``cv.md`` in the workdir.
"""

from __future__ import annotations

import pathlib
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

from mtl_jax import reporting
from mtl_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_FOLDS = flags.DEFINE_integer("folds", 5, "Number of folds (>= 2).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the folds' runs and the summary.")
flags.mark_flags_as_required(["config", "workdir"])


def summarize(fold_results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {metric: {mean, std, folds}}}`` over the folds' validation metrics."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, metrics in fold_results[0]["validation"].items():
        out[task] = {}
        for name in metrics:
            values = [r["validation"][task][name] for r in fold_results]
            out[task][name] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "folds": values,
            }
    return out


def run(config, folds: int, workdir: pathlib.Path) -> dict:
    results = []
    for fold in range(folds):
        config.unlock()
        config.cv.folds, config.cv.fold = folds, fold
        config.lock()
        print(f"fold {fold + 1}/{folds}", file=sys.stderr)
        r = train_and_evaluate(config, str(workdir / f"fold_{fold}"))
        if r is None:
            raise SystemExit(f"fold {fold} stopped early (preempted); rerun to resume")
        results.append(r)
    summary = {
        "folds": folds,
        "commit": reporting.git_commit(),
        "config": results[0]["config"],
        "validation": summarize(results),
    }
    reporting.write_json(workdir / "cv.json", summary)
    rows = [
        [task, name, reporting.mean_std(v["folds"])]
        for task, metrics in summary["validation"].items()
        for name, v in metrics.items()
        if name != "loss"
    ]
    text = "\n".join(
        [
            f"# {folds}-fold cross-validation on the train split ({config.data.name})",
            "",
            *reporting.markdown_table(
                ["task", "metric", "validation, mean +- std over folds"], rows
            ),
            "",
            f"Commit {reporting.short_commit(summary['commit'])}; command: "
            f"`python experiments/cross_validate.py {' '.join(sys.argv[1:])}`",
        ]
    )
    (workdir / "cv.md").write_text(text + "\n")
    print(text)
    return summary


def main(argv):
    del argv
    if _FOLDS.value < 2:
        raise app.UsageError("--folds must be >= 2")
    run(_CONFIG.value, _FOLDS.value, pathlib.Path(_WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
