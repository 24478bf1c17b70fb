"""One table per balancing method: test metrics, whether each beats the trivial predictor,
and the train-step cost from bench_balancing.py.

  for m in $(python -c "from mtl_jax import balancing; print(*balancing.names())"); do
    python run.py --config=configs/ecommerce.py --workdir=runs/methods/$m \\
        --config.balancing.method=$m
  done
  python experiments/bench_balancing.py --config=configs/ecommerce.py --batch_size=1024 \\
      --scopes=trunk,layer,representation
  python experiments/report_balancing.py --runs=runs/methods \\
      --out=experiments/results/balancing.md

Cost comes from the newest benchmark line per method in experiments/results/balancing.jsonl
(ratios are to ``ew`` timed in the same benchmark run).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from mtl_jax import balancing
from mtl_jax.reporting import short_commit

_GRADIENT_METHODS = {
    m for m in balancing.names() if m != "static" and balancing.make_rule(m).needs_gramian
}
_HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "logloss": False, "rmse": False, "mae": False}


def _scope_cell(scope: str, needs_gramian: bool) -> str:
    """What a gradient method's Gramian was taken over ('|' escaped for Markdown)."""
    if scope == "representation":
        return scope
    if scope:
        return "`" + scope.replace("|", "\\|") + "`"
    return "trunk" if needs_gramian else "-"


def _run_scope(balancing_config: dict) -> str:
    """'' (whole trunk, or no Gramian), a gramian_params regex, or 'representation'."""
    if balancing_config.get("gramian_at", "trunk") == "representation":
        return "representation"
    return balancing_config.get("gramian_params", "")


def _cost_by_method(bench: pathlib.Path) -> dict[str, dict]:
    cost: dict[str, dict] = {}
    if bench.exists():
        for line in bench.read_text().splitlines():
            row = json.loads(line)
            scope = "representation" if row.get("scope") == "representation" else None
            scope = scope or row.get("gramian_params", "")
            cost[(row["method"], scope)] = row  # later lines win
    return cost


def build(runs_dirs: list[pathlib.Path], bench: pathlib.Path) -> str:
    cost = _cost_by_method(bench)
    header = None
    lines = []
    found = [
        json.loads((runs / m / "results.json").read_text())
        for runs in runs_dirs
        for m in balancing.names()
        if (runs / m / "results.json").exists()
    ]
    for r in found:
        method = r["config"]["balancing"]["method"]
        scope = _run_scope(r["config"]["balancing"])
        columns = [(t, m) for t, ms in r["test"].items() for m in ms if m != "loss"]
        if header is None:
            header = [
                "method",
                "Gramian over",
                "commit",
                "best step",
                *(f"{t} {m}" for t, m in columns),
                "worse than trivial",
                "step ms",
                "x ew",
            ]
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        worse = [
            f"{t} {m}"
            for t, m in columns
            if (r["test"][t][m] <= r["trivial"][t][m]) == _HIGHER_IS_BETTER[m]
            and r["test"][t][m] != r["trivial"][t][m]
        ]
        c = cost.get((method, scope), {})
        needs_gramian = method in _GRADIENT_METHODS
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    _scope_cell(scope, needs_gramian),
                    short_commit(r["commit"]),
                    str(r["best_step"]),
                    *(f"{r['test'][t][m]:.4f}" for t, m in columns),
                    ", ".join(worse) or "none",
                    f"{c['step_ms']:.2f}" if c else "-",
                    f"{c.get('ratio_vs_ew', c.get('ratio_to_ew')):.2f}" if c else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        type=pathlib.Path,
        nargs="+",
        default=[pathlib.Path("runs/methods")],
        help="directories holding one run per method (runs/methods/<method>/results.json)",
    )
    parser.add_argument(
        "--bench",
        type=pathlib.Path,
        default=pathlib.Path(__file__).parent / "results" / "balancing.jsonl",
    )
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    table = build(args.runs, args.bench)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
