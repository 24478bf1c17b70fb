"""ESMM's claim on the e-commerce simulator: a conversion model trained on clicked
impressions only (the naive CVR model) against ESMM (Ma et al., SIGIR 2018), judged on the
entire space of impressions.

  python experiments/esmm.py --seeds=10 --workdir=runs/esmm --out=experiments/results/esmm.md

For each seed (fresh simulated data and initialisation; the two variants share both, so
differences are paired) it trains ``configs/ecommerce.py:naive_cvr`` (click + a CVR task
labelled on clicks only) and ``configs/ecommerce.py:esmm`` (click + purchase, with
pCTCVR = pCTR x pCVR over all impressions and the CVR tower never supervised directly),
each selected on validation click AUC, then scores the test split with the best checkpoint:

- CVR AUC, entire space: the model's pCVR on every test impression against the simulator's
  P(purchase | click), as the expected AUC over labels drawn from it
  (``metrics.expected_auc``): what ESMM says a CVR model is used for and must be judged on;
- CVR AUC, clicked: pCVR against observed purchases on clicked test impressions (the
  space the naive model is trained on);
- CTCVR AUC: pCTR x pCVR against purchases on every test impression.

Runs already finished in ``--workdir`` are reused (their results.json and best checkpoint).
Writes a markdown report with per-seed values, paired differences (ESMM - naive) and their
95% t confidence intervals, and the raw numbers as JSON next to it.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SEEDS = flags.DEFINE_integer("seeds", 10, "Paired seeds (0 .. seeds-1).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/esmm", "Where the runs are (re)used.")
_OUT = flags.DEFINE_string("out", str(ROOT / "experiments/results/esmm.md"), "Report path.")
_OVERRIDES = flags.DEFINE_multi_string(
    "set", [], "Config overrides KEY=VALUE applied to both variants (e.g. train.num_steps=1500)."
)

VARIANTS = ("naive_cvr", "esmm")
METRICS = ("cvr_auc_entire", "cvr_auc_clicked", "ctcvr_auc")


def _config(variant: str, seed: int):
    from configs import ecommerce

    config = ecommerce.get_config(variant)
    config.seed = seed
    for item in _OVERRIDES.value:
        key, _, value = item.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = json.loads(value)  # numbers and booleans as JSON: 1500, 0.3, true
    return config


def _predict(config, workdir: pathlib.Path) -> tuple[dict[str, np.ndarray], object]:
    """pCTR and pCVR of every test impression from the run's best checkpoint."""
    from mtl_jax import parallel
    from mtl_jax.data.pipeline import eval_batches
    from mtl_jax.trainer import Trainer, load_run_dataset

    dataset = load_run_dataset(config)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    params = trainer.best_params(workdir)
    esmm = bool(config.model.esmm_ctr_task)

    @jax.jit
    def scores(params, features):
        logits, state = trainer.model.apply({"params": params}, features, mutable=["intermediates"])
        cvr = state["intermediates"]["cvr_logit"][0] if esmm else logits["cvr"]
        return jax.nn.sigmoid(logits["click"]), jax.nn.sigmoid(cvr)

    test = dataset.test
    ctr, cvr = [], []
    for batch in eval_batches(test, config.train.eval_batch_size):
        a, b = scores(params, batch["features"])
        ctr.append(np.asarray(a))
        cvr.append(np.asarray(b))
    n = len(test)
    return {"ctr": np.concatenate(ctr)[:n], "cvr": np.concatenate(cvr)[:n]}, test


def _measure(variant: str, seed: int) -> dict[str, float]:
    from mtl_jax import metrics
    from mtl_jax.train import train_and_evaluate

    config = _config(variant, seed)
    workdir = pathlib.Path(_WORKDIR.value) / f"{variant}_{seed}"
    if not (workdir / "results.json").is_file():
        train_and_evaluate(config, str(workdir))
    pred, test = _predict(config, workdir)
    clicked = test.labels["click"] > 0
    purchase = test.labels["purchase"]
    return {
        "cvr_auc_entire": metrics.expected_auc(test.oracle["cvr"], pred["cvr"]),
        "cvr_auc_clicked": metrics.auc(purchase[clicked], pred["cvr"][clicked]),
        "ctcvr_auc": metrics.auc(purchase, pred["ctr"] * pred["cvr"]),
        "oracle_cvr_auc_entire": metrics.expected_auc(test.oracle["cvr"], test.oracle["cvr"]),
        "oracle_ctcvr_auc": metrics.auc(purchase, test.oracle["purchase"]),
        "test_clicks": int(clicked.sum()),
        "test_purchases": int(purchase.sum()),
    }


def _ci(diffs: np.ndarray) -> tuple[float, float, float]:
    from mtl_jax import reporting

    ci = reporting.paired_interval(diffs)
    return ci["mean"], ci["low"], ci["high"]


def main(argv: list[str]) -> None:
    del argv
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    runs = {v: [] for v in VARIANTS}
    for seed in range(_SEEDS.value):
        for variant in VARIANTS:
            result = _measure(variant, seed)
            runs[variant].append(result)
            print(f"seed {seed} {variant}: " + ", ".join(f"{m} {result[m]:.4f}" for m in METRICS))
    out = pathlib.Path(_OUT.value)
    out.with_suffix(".json").write_text(json.dumps({"commit": commit, "runs": runs}, indent=1))
    lines = [
        "# ESMM's claim: conversion rate judged on the entire space",
        "",
        f"{_SEEDS.value} paired seeds (fresh simulated data and initialisation per seed, shared "
        f"by both variants), commit {commit}:",
        "",
        "```bash",
        f"python experiments/esmm.py --seeds={_SEEDS.value} --workdir={_WORKDIR.value}"
        + "".join(f" --set={s}" for s in _OVERRIDES.value),
        "```",
        "",
        "| metric | naive CVR | ESMM | ESMM - naive (mean, 95% CI) | seeds ESMM better | oracle |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    oracle = {
        "cvr_auc_entire": "oracle_cvr_auc_entire",
        "cvr_auc_clicked": None,
        "ctcvr_auc": "oracle_ctcvr_auc",
    }
    for m in METRICS:
        naive = np.array([r[m] for r in runs["naive_cvr"]])
        esmm = np.array([r[m] for r in runs["esmm"]])
        mean, low, high = _ci(esmm - naive)
        ref = oracle[m]
        ref_text = f"{np.mean([r[ref] for r in runs['esmm']]):.4f}" if ref else "-"
        lines.append(
            f"| {m} | {naive.mean():.4f} +- {naive.std(ddof=1):.4f} | "
            f"{esmm.mean():.4f} +- {esmm.std(ddof=1):.4f} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] "
            f"| {int((esmm > naive).sum())}/{len(esmm)} | {ref_text} |"
        )
    lines += ["", "Per seed (naive / ESMM):", ""]
    lines.append("| seed | " + " | ".join(METRICS) + " |")
    lines.append("| --- |" + " --- |" * len(METRICS))
    for seed in range(_SEEDS.value):
        cells = [f"{runs['naive_cvr'][seed][m]:.4f} / {runs['esmm'][seed][m]:.4f}" for m in METRICS]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
