"""MovieLens-100K report: test metrics mean +- std over seeds per trunk, the ranking metrics
and the MMR accuracy/diversity trade-off, beside classic baselines fitted on the same split.

  for t in mmoe shared_bottom; do for s in 0 1 2; do
    python run.py --config=configs/movielens.py --workdir=runs/ml_final/${t}_seed$s \\
        --config.model.trunk=$t --config.seed=$s
  done; done
  python experiments/baselines_movielens.py
  python experiments/report_movielens.py --runs=runs/ml_final \\
      --out=experiments/results/movielens.md

Run directories are grouped by the trunk in their config; baselines come from
experiments/results/movielens_baselines.json (see baselines_movielens.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics

from mtl_jax.reporting import markdown_table, mean_std, short_commit

_TASK_METRICS = [
    ("rating", "rmse"), ("rating", "mae"), ("like", "auc"), ("like", "logloss"),
    ("genre", "micro_auc"), ("genre", "macro_auc"),
]  # fmt: skip


def _load_runs(runs: pathlib.Path) -> dict[str, list[dict]]:
    by_trunk: dict[str, list[dict]] = collections.defaultdict(list)
    for path in sorted(runs.glob("*/results.json")):
        r = json.loads(path.read_text())
        r["_name"] = path.parent.name
        by_trunk[r["config"]["model"]["trunk"]].append(r)
    if not by_trunk:
        raise SystemExit(f"no */results.json under {runs}")
    return by_trunk


def build(runs: pathlib.Path, baselines: pathlib.Path) -> str:
    by_trunk = _load_runs(runs)
    any_run = next(iter(by_trunk.values()))[0]
    lambdas = [k for k in any_run["ranking"] if k != "setup"]
    plain = lambdas[0]
    ranking_metrics = list(any_run["ranking"][plain])
    out = [
        f"Split sizes (train / validation / test): {any_run['dataset_sizes']}. Ranking: "
        f"{any_run['ranking']['setup']['users']} test users with a liked test movie, "
        f"{any_run['ranking']['setup']['items']} movies, every movie a user has not rated in "
        "train or validation is a candidate; ranked by P(like).",
        "",
        "## Test metrics, mean +- std over seeds",
        "",
    ]
    header = ["trunk", "seeds", *(f"{t} {m}" for t, m in _TASK_METRICS)]
    header += [f"{m} ({plain})" for m in ranking_metrics]
    rows = []
    for trunk, group in by_trunk.items():
        row = [trunk, str(len(group))]
        row += [mean_std([r["test"][t][m] for r in group]) for t, m in _TASK_METRICS]
        row += [mean_std([r["ranking"][plain][m] for r in group]) for m in ranking_metrics]
        rows.append(row)
    out += markdown_table(header, rows)

    out += ["", "Per run:", ""]
    header = ["run", "seed", "commit", "best step", "val rating rmse", "test rating rmse"]
    header += ["like auc", f"ndcg@10 ({plain})"]
    rows = [
        [
            r["_name"], str(r["config"]["seed"]), short_commit(r["commit"]), str(r["best_step"]),
            f"{r['best_validation']['rating/rmse']:.4f}", f"{r['test']['rating']['rmse']:.4f}",
            f"{r['test']['like']['auc']:.4f}", f"{r['ranking'][plain]['ndcg@10']:.4f}",
        ]
        for group in by_trunk.values()
        for r in group
    ]  # fmt: skip
    out += markdown_table(header, rows)

    out += ["", "## Diversity re-ranking (MMR by genre), mean over seeds", ""]
    header = ["trunk", "MMR lambda", *ranking_metrics]
    rows = []
    for trunk, group in by_trunk.items():
        for lam in lambdas:
            values = [statistics.mean(r["ranking"][lam][m] for r in group) for m in ranking_metrics]
            rows.append([trunk, lam.split("=")[1], *(f"{v:.4f}" for v in values)])
    out += markdown_table(header, rows)

    if baselines.exists():
        b = json.loads(baselines.read_text())
        out += [
            "",
            "## Classic baselines on the same split",
            "",
            f"scikit-surprise, default parameters, fitted on train + validation "
            f"({b['split_sizes']}), commit {short_commit(b['commit'])}:",
            "",
        ]
        models = collections.defaultdict(list)
        for row in b["rows"]:
            models[row["model"]].append(row)
        out += markdown_table(
            ["model", "fits", "test rmse", "test mae"],
            [
                [
                    m,
                    str(len(v)),
                    mean_std([x["rmse"] for x in v]),
                    mean_std([x["mae"] for x in v]),
                ]
                for m, v in models.items()
            ],
        )
        if "ranking" in b:
            out += ["", "Ranking without a model, same candidates and relevant items:", ""]
            out += markdown_table(
                ["ranking by", *ranking_metrics],
                [
                    [name, *(f"{values[m]:.4f}" for m in ranking_metrics)]
                    for name, values in b["ranking"].items()
                ],
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/ml_final"))
    parser.add_argument(
        "--baselines",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "movielens_baselines.json",
    )
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    text = build(args.runs, args.baselines)
    print(text)
    if args.out:
        args.out.write_text("# MovieLens-100K\n\n" + text)


if __name__ == "__main__":
    main()
