"""Tabulates finished runs' results.json: per-task test metrics, oracle and trivial baselines.

  python experiments/report_runs.py runs/ecommerce runs/ecommerce_seed1 runs/ecommerce_seed2 \\
      --out experiments/results/ecommerce.md

Each row is one run (its seed and commit come from its own results.json), followed by the
mean +- std over the runs given (seeds of one setting; --no_summary when they differ by design).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from mtl_jax.reporting import mean_std, short_commit


def _metric_columns(results: dict) -> list[tuple[str, str]]:
    return [
        (task, metric)
        for task, metrics in results["test"].items()
        for metric in metrics
        if metric != "loss"
    ]


def build_table(workdirs: list[pathlib.Path], summary: bool = True) -> str:
    runs = [json.loads((w / "results.json").read_text()) for w in workdirs]
    columns = _metric_columns(runs[0])
    header = ["run", "seed", "commit", "best step"] + [f"{t} {m}" for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for workdir, r in zip(workdirs, runs, strict=True):
        cells = [
            workdir.name,
            str(r["config"]["seed"]),
            short_commit(r["commit"]),
            str(r["best_step"]),
        ]
        cells += [f"{r['test'][t][m]:.4f}" for t, m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if summary and len(runs) > 1:
        cells = ["mean +- std", "", "", ""]
        for t, m in columns:
            values = [r["test"][t][m] for r in runs]
            cells.append(mean_std(values))
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Oracle and trivial baselines on the same test split, and the model's gap:", ""]
    lines += ["| run | task | metric | model | oracle | gap to oracle | trivial |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for workdir, r in zip(workdirs, runs, strict=True):
        for t, m in columns:
            oracle = r["oracle"].get(t, {}).get(m)
            model = r["test"][t][m]
            gap = f"{abs(oracle - model):.4f}" if oracle is not None else "-"
            oracle_text = f"{oracle:.4f}" if oracle is not None else "-"
            lines.append(
                f"| {workdir.name} | {t} | {m} | {model:.4f} | {oracle_text} | {gap} | "
                f"{r['trivial'][t][m]:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, help="also write the Markdown here")
    parser.add_argument("--title", default="Results")
    parser.add_argument(
        "--no_summary", action="store_true", help="omit the mean +- std row (runs differ by design)"
    )
    args = parser.parse_args()
    missing = [str(w) for w in args.workdirs if not (w / "results.json").exists()]
    if missing:
        parser.error(f"no results.json in {missing}: has the run finished?")
    table = build_table(args.workdirs, summary=not args.no_summary)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# {args.title}\n\n{table}")


if __name__ == "__main__":
    main()
