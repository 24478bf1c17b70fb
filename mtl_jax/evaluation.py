"""Evaluation and the final report: metrics per task, calibration, references, results.json.

Host-side: turns predictions of a split into ``{task: {metric: value}}``, and a finished
run's best parameters into the results dict (``final_results``) the loop writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mtl_jax import configlib, ranking, reporting
from mtl_jax import metrics as metrics_lib
from mtl_jax import tasks as tasks_lib
from mtl_jax.data import MultiTaskDataset, Split
from mtl_jax.tasks import TaskSpec

if TYPE_CHECKING:
    from mtl_jax.trainer import Trainer

log = logging.getLogger("mtl_jax")


def gradient_diagnostics(gram: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> dict:
    """Per-task trunk gradient norms, pairwise cosines and the effective task weights."""
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    cos = gram / np.maximum(np.outer(norms, norms), 1e-30)
    out = {f"{n}/grad_norm": float(norms[i]) for i, n in enumerate(names)}
    out.update({f"{n}/weight": float(weights[i]) for i, n in enumerate(names)})
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"cos/{names[i]}-{names[j]}"] = float(cos[i, j])
    return out


def task_metrics(
    tasks: Sequence[TaskSpec], split: Split, predictions: dict[str, np.ndarray], losses: Any
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, "loss": mean loss}}`` from one model's predictions."""
    return {
        t.name: {**score_task(t, split, predictions[t.name]), "loss": float(losses[i])}
        for i, t in enumerate(tasks)
    }


def _binary_tasks(tasks: Sequence[TaskSpec], split: Split, predictions: dict[str, np.ndarray]):
    """(task, labelled-row mask, labels, probabilities) of every binary task on ``split``."""
    for t in tasks:
        if t.kind == "binary":
            mask = split.masks[t.name] > 0
            yield t, mask, split.labels[t.name][mask], predictions[t.name][mask]


def calibration(
    tasks: Sequence[TaskSpec], split: Split, predictions: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """ECE and predicted / observed rate of every binary task on ``split``."""
    return {
        t.name: {
            "ece": metrics_lib.expected_calibration_error(labels, probs),
            "predicted_over_observed": metrics_lib.predicted_over_observed(labels, probs),
        }
        for t, _, labels, probs in _binary_tasks(tasks, split, predictions)
    }


def gauc_group(setting: str, split: Split) -> str:
    """The feature GAUC groups by: ``setting``, or for "auto" ``user_id`` when the split has
    it ('' = no GAUC)."""
    if setting == "auto":
        return "user_id" if "user_id" in split.features else ""
    return setting


def binary_task_metrics(
    tasks: Sequence[TaskSpec],
    split: Split,
    predictions: dict[str, np.ndarray],
    threshold: float,
    group: str = "",
) -> dict[str, dict[str, float]]:
    """Per binary task: GAUC over ``group`` (when given), and precision, recall and F1 of
    predicting positive at probability >= ``threshold``."""
    out = {}
    for t, mask, labels, probs in _binary_tasks(tasks, split, predictions):
        m = {"gauc": metrics_lib.gauc(labels, probs, split.features[group][mask])} if group else {}
        scores = metrics_lib.precision_recall_f1(labels, probs, threshold)
        out[t.name] = {**m, **{f"{k}@{threshold:g}": v for k, v in scores.items()}}
    return out


def score_task(task: TaskSpec, split: Split, predictions: np.ndarray) -> dict[str, float]:
    mask = split.masks[task.name] > 0
    return tasks_lib.evaluate(task, split.labels[task.name][mask], predictions[mask])


def reference_metrics(
    tasks: Sequence[TaskSpec],
    dataset: MultiTaskDataset,
    split: Split,
    priors: dict[str, float] | None = None,
) -> tuple[dict, dict]:
    """Metrics of the simulator's oracle and of the trivial (train-prior) predictor;
    ``priors`` replaces the train split's for tasks whose training rows are not all there
    (an implicit task's sampled negatives)."""
    oracle = {
        t.name: score_task(t, split, split.oracle[t.name]) for t in tasks if t.name in split.oracle
    }
    trivial = {}
    for t in tasks:
        prior = (priors or {}).get(t.name)
        prior = dataset.train.prior(t) if prior is None else np.asarray(prior)
        preds = tasks_lib.trivial_predictions(t, prior, len(split))
        trivial[t.name] = score_task(t, split, preds)
    return oracle, trivial


def format_task_metrics(metrics: dict[str, dict[str, float]]) -> str:
    return " | ".join(
        f"{task} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "loss")
        for task, m in metrics.items()
    )


def final_results(
    trainer: Trainer,
    dataset: MultiTaskDataset,
    best_params: Any,
    meta: dict[str, Any],
    measured: dict[str, Any],
) -> dict[str, Any]:
    """The results.json of a finished run: validation and test metrics of the best-on-
    validation parameters, references, calibration, subsets, ranking; logged as it goes.
    ``meta``: the run's best_step, best_value and step; ``measured``: throughput, wall
    time and the train step's memory estimate."""
    config, t = trainer.config, trainer.config.train
    validation = trainer.evaluate(best_params, dataset.validation)
    # Test predictions once, for the metrics, the calibration and the binary-task metrics
    # (with an implicit task's sampled negatives, as trainer.evaluate scores them).
    test_split = trainer.evaluation_split(dataset.test)
    test_predictions, test_losses = trainer.predict(best_params, test_split)
    test = task_metrics(trainer.tasks, test_split, test_predictions, test_losses)
    negatives = trainer.negatives
    priors = {negatives.task: negatives.positive_rate} if negatives else None
    oracle, trivial = reference_metrics(trainer.tasks, dataset, test_split, priors)
    results = {
        "config": configlib.to_dict(config),
        "commit": reporting.git_commit(),  # the code that wrote this report
        "trained_commits": meta.get("trained_commits", []),  # ... and that trained the run
        "dataset_sizes": dataset.sizes(),
        "best_step": meta["best_step"],
        "best_validation": {t.early_stopping_metric: meta["best_value"]},
        "validation": validation,
        "steps_trained": meta["step"],
        "early_stopped": meta["step"] < t.num_steps,
        "test": test,
        "oracle": oracle,
        "trivial": trivial,
        **measured,
        "peak_rss_mb": reporting.peak_rss_mb(),
        "num_devices": trainer.mesh.size,
    }
    log.info("test metrics (best validation step %s):", meta["best_step"])
    for task in trainer.tasks:
        name = task.name
        ref = f"  oracle {_fmt(oracle[name])}" if name in oracle else ""
        log.info("  %-9s %s  | trivial %s%s", name, _fmt(test[name]), _fmt(trivial[name]), ref)
    results["calibration"] = calibration(trainer.tasks, test_split, test_predictions)
    for name, c in results["calibration"].items():
        log.info(
            "  %-9s calibration: ECE %.4f, predicted/observed %.3f",
            name, c["ece"], c["predicted_over_observed"],
        )  # fmt: skip
    group = gauc_group(config.metrics.gauc_group, test_split)
    results["test_binary"] = binary_task_metrics(
        trainer.tasks, test_split, test_predictions, config.metrics.threshold, group
    )
    for name, m in results["test_binary"].items():
        log.info("  %-9s %s", name, " ".join(f"{k}={v:.4f}" for k, v in m.items()))
    for split_name, subsets in (
        ("validation", dataset.validation_subsets),
        ("test", dataset.test_subsets),
    ):
        if not subsets:
            continue
        out = results[f"{split_name}_subsets"] = {}
        for subset, rows in subsets.items():
            metrics = trainer.evaluate(best_params, dataset.split(split_name).take(rows))
            out[subset] = {"examples": len(rows), **metrics}
            log.info(
                "  %s (%d %s rows): %s",
                subset, len(rows), split_name, format_task_metrics(metrics),
            )  # fmt: skip
    if config.ranking.enabled:
        predict = lambda split: trainer.predict(best_params, split)[0]  # noqa: E731
        negatives = config.get("negatives")
        # Validation ranking (for choosing ranking settings on validation), unless the
        # implicit task trained on the validation interactions.
        splits = {"ranking": "test"}
        if not (negatives and negatives.task and negatives.validation_positives):
            splits = {"validation_ranking": "validation", **splits}
        for key, split_name in splits.items():
            log.info("ranking the catalogue for every %s user ...", split_name)
            results[key] = ranking.evaluate_ranking(
                predict, dataset, config.ranking, split=split_name
            )
            log.info("%s ranking (%s):", split_name, results[key]["setup"])
            for line in ranking.format_ranking(results[key]):
                log.info("  %s", line)
    return results


def format_diagnostics(diagnostics: dict, names: Sequence[str]) -> str:
    weights = " ".join(f"{n}={diagnostics[f'{n}/weight']:.3g}" for n in names)
    norms = " ".join(f"{n}={diagnostics[f'{n}/grad_norm']:.3g}" for n in names)
    cosines = [v for k, v in diagnostics.items() if k.startswith("cos/")]
    worst = min(cosines) if cosines else float("nan")
    return f"weights {weights} | trunk grad norms {norms} | min pairwise cos {worst:+.3f}"


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "loss")
