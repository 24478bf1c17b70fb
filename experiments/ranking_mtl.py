"""Top-10 ranking on MovieLens-100K with the implicit "rated" task: what each piece is worth.

  python experiments/ranking_mtl.py --seeds=3 --workdir=runs/ranking \
      --out=experiments/results/ranking.md

Trains ``configs/movielens.py`` (rating, like, genre and the implicit "rated" task with
sampled negatives; ranking by P(rated) x P(like)) and variants that each change one thing,
every one with the same seeds, so each variant's difference from the default is paired:

- ``rated_like``: only the rated and like tasks (no rating, no genre);
- ``rated_alone``: only the rated task, ranking by P(rated);
- ``uniform``: negatives drawn uniformly instead of by popularity;
- ``no_logq``: popularity negatives without the logQ correction;
- ``train_positives``: the rated task's positives from the train split only (not also the
  validation interactions, which the baselines are fitted on);
- ``explicit``: the model before the rated task (rating, like, genre; 8-dimensional
  embeddings, EW, learning rate 1e-3; ranking by P(like)).

Each run selects its step on validation rating RMSE (validation like AUC where there is no
rating task) and is scored on test. Runs already finished in ``--workdir`` are reused.
Writes a markdown report (mean +- std per variant, paired differences from the default with
95% t intervals) and the raw numbers as JSON next to it.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SEEDS = flags.DEFINE_integer("seeds", 3, "Paired seeds (0 .. seeds-1).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ranking", "Where the runs are (re)used.")
_OUT = flags.DEFINE_string("out", str(ROOT / "experiments/results/ranking.md"), "Report path.")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all).")

_EXPLICIT = ("rating", "like", "genre")
# variant -> overrides of configs/movielens.py (dotted key -> value)
VARIANTS: dict[str, dict] = {
    "default": {},
    "rated_like": {
        "tasks": ("like", "rated"),
        "train.early_stopping_metric": "like/auc",
    },
    "rated_alone": {
        "tasks": ("rated",),
        "train.early_stopping_metric": "rated/auc",
        "ranking.relevance_task": "rated",
        "ranking.fusion.like": 0.0,
    },
    "uniform": {"negatives.sampling": "uniform"},
    "no_logq": {"negatives.logq_correction": False},
    "train_positives": {"negatives.validation_positives": False},
    "explicit": {  # configs/movielens.py before the rated task, as in movielens.md
        "tasks": _EXPLICIT,
        "negatives.task": "",
        "ranking.fusion.rated": 0.0,
        "ranking.fusion_mode": "sum",
        "balancing.method": "ew",
        "model.embed_dim": 8,
        "optim.learning_rate": 1e-3,
    },
}
RANKING = ("ndcg@10", "hr@10", "recall@10", "coverage@10", "long_tail_share")


def _config(variant: str, seed: int):
    from configs import movielens

    config = movielens.get_config()
    config.unlock()
    config.seed = seed
    for key, value in VARIANTS[variant].items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if variant == "rated_alone":
        # Relevance stays "test movies rated >= 4": the like labels mark them, though the
        # run does not train on like; rank by P(rated) alone.
        config.tasks = ("rated", "like")
        config.balancing.method = "static"
        config.balancing.weights.like = 0.0
    config.lock()
    return config


def _measure(variant: str, seed: int) -> dict[str, float]:
    from mtl_jax.train import train_and_evaluate

    workdir = pathlib.Path(_WORKDIR.value) / f"{variant}_{seed}"
    if (workdir / "results.json").is_file():
        results = json.loads((workdir / "results.json").read_text())
    else:
        results = train_and_evaluate(_config(variant, seed), str(workdir))
    plain = results["ranking"]["mmr_lambda=1"]
    out = {m: float(plain[m]) for m in RANKING}
    test = results["test"]
    out["rating_rmse"] = float(test["rating"]["rmse"]) if "rating" in test else float("nan")
    out["like_auc"] = float(test["like"]["auc"]) if "like" in test else float("nan")
    out["commit"] = results["commit"]
    out["wall_s"] = float(results.get("wall_time_s", float("nan")))
    return out


def _ci(diffs: np.ndarray) -> tuple[float, float, float]:
    from mtl_jax import reporting

    ci = reporting.paired_interval(diffs)
    return ci["mean"], ci["low"], ci["high"]


def main(argv: list[str]) -> None:
    del argv
    names = _VARIANTS.value or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    if "default" not in names:
        names = ["default", *names]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    seeds = list(range(_SEEDS.value))
    runs = {v: [] for v in names}
    for seed in seeds:
        for variant in names:
            r = _measure(variant, seed)
            runs[variant].append(r)
            print(f"seed {seed} {variant}: ndcg@10 {r['ndcg@10']:.4f} hr@10 {r['hr@10']:.4f} "
                  f"rating rmse {r['rating_rmse']:.4f}", flush=True)  # fmt: skip
        _report(runs, names, seed + 1, commit)  # after every seed: a partial report


def _report(runs: dict, names: list[str], num_seeds: int, commit: str) -> None:
    seeds = list(range(num_seeds))
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"commit": commit, "runs": runs}, indent=1))
    metrics = (*RANKING, "rating_rmse")
    lines = [
        "# Top-10 ranking on MovieLens-100K with the implicit task",
        "",
        f"{len(seeds)} seeds per variant (initialisation, data order and negatives; the split "
        f"is fixed), report written at commit {commit}; each run's commit is in the JSON:",
        "",
        "```bash",
        f"python experiments/ranking_mtl.py --seeds={len(seeds)} --workdir={_WORKDIR.value}"
        + (f" --variants={','.join(names)}" if _VARIANTS.value else ""),
        "```",
        "",
        "| variant | " + " | ".join(metrics) + " |",
        "| --- |" + " --- |" * len(metrics),
    ]
    for v in names:
        cells = []
        for m in metrics:
            x = np.array([r[m] for r in runs[v]])
            std = x.std(ddof=1) if len(x) > 1 else 0.0
            cells.append("-" if np.isnan(x).all() else f"{x.mean():.4f} +- {std:.4f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences from the default (variant - default, mean and 95% t interval; "
        "seeds where the variant is higher):",
        "",
        "| variant | ndcg@10 | hr@10 | coverage@10 | rating_rmse |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = runs["default"]
    for v in names:
        if v == "default":
            continue
        cells = []
        for m in ("ndcg@10", "hr@10", "coverage@10", "rating_rmse"):
            d = np.array([a[m] - b[m] for a, b in zip(runs[v], base, strict=True)])
            if np.isnan(d).all():
                cells.append("-")
                continue
            mean, low, high = _ci(d)
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] ({int((d > 0).sum())}/{len(d)})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
