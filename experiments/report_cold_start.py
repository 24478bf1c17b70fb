"""Cold-start table: IDs + side features vs IDs + side features + text, on cold and warm movies.

  for seed in 0 1 2; do
    python run.py --config=configs/movielens.py:cold --workdir=runs/cold/cold_$seed \\
        --config.seed=$seed
    python run.py --config=configs/movielens.py:cold_text --workdir=runs/cold/cold_text_$seed \\
        --config.seed=$seed
  done
  python experiments/report_cold_start.py --runs=runs/cold --out=experiments/results/cold_start.md

With ``configs/movielens.py:cold_lm`` runs (a language model as the trunk) in the same
directory, they form a third variant.

Each seed draws a different 10% of the movies as cold (their ratings appear only in test).
Every number is a test metric of the checkpoint chosen on validation rating RMSE (validation
holds no cold movies, as a deployed model would not have seen them either).
"""

from __future__ import annotations

import json
import pathlib
import statistics

from mtl_jax.reporting import markdown_table, mean_std, report_main, short_commit

_METRICS = [("rating", "rmse", False), ("like", "auc", True), ("genre", "macro_auc", True)]
_SUBSETS = ("cold_items", "warm_items")


def _variant(results: dict) -> str:
    config = results["config"]
    if config["model"]["trunk"] == "llm":
        lm = config["llm"].get("preset") or config["text"]["model_dir"] or "all-MiniLM-L6-v2"
        lora = config["llm"]["lora"]
        return (
            f"LM trunk ({pathlib.Path(lm).name} + LoRA r{lora['rank']}, history "
            f"{config['llm']['history']}) + IDs + side"
        )
    features = config["text"]["features"]
    if not features:
        return "IDs + side features"
    l2 = results["config"].get("regularization", {}).get("l2", {}).get("text", 0.0)
    names = "+".join(f.replace("_id", "") for f in features)
    return f"IDs + side + text ({names}; text L2 {l2:g})"


def build(runs: pathlib.Path) -> str:
    groups: dict[str, list[dict]] = {}
    for path in sorted(runs.glob("*/results.json")):
        r = json.loads(path.read_text())
        if "test_subsets" in r:
            groups.setdefault(_variant(r), []).append(r)
    if not groups:
        raise SystemExit(f"no cold-start results.json under {runs}")
    header = ["variant", "seeds", "commit"] + [
        f"{subset.split('_')[0]} {task} {metric}"
        for subset in _SUBSETS
        for task, metric, _ in _METRICS
    ]
    val_header = ["variant", "seeds"] + [
        f"val {subset.split('_')[0]} {task} {metric}"
        for subset in _SUBSETS
        for task, metric, _ in _METRICS
    ]
    val_rows = []
    rows = []
    means: dict[str, dict[tuple, float]] = {}
    for variant, group in sorted(groups.items()):
        row = [
            variant,
            str(len(group)),
            ", ".join(sorted({short_commit(r["commit"]) for r in group})),
        ]
        means[variant] = {}
        for subset in _SUBSETS:
            for task, metric, _ in _METRICS:
                values = [r["test_subsets"][subset][task][metric] for r in group]
                means[variant][(subset, task, metric)] = statistics.mean(values)
                row.append(mean_std(values))
        rows.append(row)
        if all("validation_subsets" in r for r in group):
            val_rows.append(
                [variant, str(len(group))]
                + [
                    mean_std([r["validation_subsets"][subset][task][metric] for r in group])
                    for subset in _SUBSETS
                    for task, metric, _ in _METRICS
                ]
            )
    lines = ["# Cold start on MovieLens-100K: does text help new movies?", ""]
    lines += ["## Test", ""] + markdown_table(header, rows)
    if val_rows:
        lines += ["", "## Validation (where choices are made)", ""]
        lines += markdown_table(val_header, val_rows)
    example = next(iter(groups.values()))[0]
    sizes = {k: v["examples"] for k, v in example["test_subsets"].items()}
    lines += [
        "",
        f"Test rows (seed {example['config']['seed']}): {sizes}; split sizes "
        f"{example['dataset_sizes']}.",
    ]
    plain = means.get("IDs + side features")
    for variant, text in means.items():
        if plain is None or variant == "IDs + side features":
            continue
        lines += ["", f"Test change with {variant} (mean over seeds; positive = better):", ""]
        for subset in _SUBSETS:
            parts = []
            for task, metric, higher in _METRICS:
                delta = text[(subset, task, metric)] - plain[(subset, task, metric)]
                parts.append(f"{task} {metric} {delta if higher else -delta:+.4f}")
            lines.append(f"- {subset.replace('_', ' ')}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> None:
    report_main(__doc__, "runs/cold", build)


if __name__ == "__main__":
    main()
