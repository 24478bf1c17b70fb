"""One table per dataset: each training strategy's test metrics (mean +- std over seeds),
the binary tasks' calibration, and the change against the baseline.

  python experiments/report_strategies.py --runs=runs/strategies \\
      --out=experiments/results/strategies.md

Run directories are named ``<dataset>_<strategy>_<seed>`` (e.g. ``ecommerce_staged_1``), each
holding a finished ``results.json``; the strategy called ``baseline`` is the reference.
"""

from __future__ import annotations

import collections
import json
import pathlib

from mtl_jax.reporting import markdown_table, mean_std, report_main, short_commit

_HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "micro_auc": True, "macro_auc": True}


def _load(runs: pathlib.Path) -> dict[str, dict[str, list[dict]]]:
    grouped: dict[str, dict[str, list[dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for path in sorted(runs.glob("*/results.json")):
        dataset, _, rest = path.parent.name.partition("_")
        strategy, _, _seed = rest.rpartition("_")
        grouped[dataset][strategy].append(json.loads(path.read_text()))
    if not grouped:
        raise SystemExit(f"no <dataset>_<strategy>_<seed>/results.json under {runs}")
    return grouped


def table(strategies: dict[str, list[dict]]) -> list[str]:
    example = next(iter(strategies.values()))[0]
    columns = [(t, m) for t, ms in example["test"].items() for m in ms if m != "loss"]
    calibrated = list(example.get("calibration", {}))
    header = ["strategy", "seeds", "commit", *(f"{t} {m}" for t, m in columns)]
    header += [f"{t} ECE" for t in calibrated] + [f"{t} pred/obs" for t in calibrated]
    rows = []
    for name in sorted(strategies, key=lambda s: (s != "baseline", s)):
        group = strategies[name]
        row = [name, str(len(group)), ", ".join(sorted({short_commit(r["commit"]) for r in group}))]
        row += [mean_std([r["test"][t][m] for r in group]) for t, m in columns]
        row += [mean_std([r["calibration"][t]["ece"] for r in group]) for t in calibrated]
        row += [
            mean_std([r["calibration"][t]["predicted_over_observed"] for r in group], digits=3)
            for t in calibrated
        ]
        rows.append(row)
    lines = markdown_table(header, rows)
    if "baseline" in strategies:
        base = {r["config"]["seed"]: r for r in strategies["baseline"]}
        lines += [
            "",
            "Change against the baseline of the same seed (the simulators draw the data from "
            "the seed, so pairs share their data), mean +- std over seeds; positive = better:",
            "",
        ]
        for name, group in sorted(strategies.items()):
            if name == "baseline":
                continue
            pairs = [(r, base[r["config"]["seed"]]) for r in group if r["config"]["seed"] in base]
            parts = []
            for t, m in columns:
                sign = 1.0 if _HIGHER_IS_BETTER.get(m, False) else -1.0
                deltas = [sign * (r["test"][t][m] - b["test"][t][m]) for r, b in pairs]
                parts.append(f"{t} {m} {mean_std(deltas, signed=True) if deltas else 'n/a'}")
            lines.append(f"- {name} ({len(pairs)} pairs): " + ", ".join(parts))
    return lines


def build(runs: pathlib.Path) -> str:
    lines = ["# Training strategies", ""]
    for dataset, strategies in sorted(_load(runs).items()):
        lines += [f"## {dataset}", "", *table(strategies), ""]
    return "\n".join(lines)


def main() -> None:
    report_main(__doc__, "runs/strategies", build)


if __name__ == "__main__":
    main()
