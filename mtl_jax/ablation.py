"""Aggregating a sweep: per-cell mean +- std over seeds, delta-m% against the single-task
cell, selection on validation only, cost columns; Markdown, CSV and LaTeX tables.

delta-m% (Maninis et al. 2019, as Vandenhende et al. 2021 extend it to several metrics per
task): for each task, the mean over its metrics of the signed relative change of the cell's
mean against the reference cell's mean, ``(-1)^lower_is_better (M - M_ref) / M_ref``; then
the mean over tasks, in percent. Positive = better than training the tasks apart. The Delta
column is computed from the very means the table prints, so it can be checked by hand.

Nothing is chosen on the test split: every run reports the test metrics of its best-on-
validation checkpoint, and the "selected" cell is the one with the best validation delta-m%.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

import ml_collections

from mtl_jax import balancing, reporting
from mtl_jax.models import stacked_grads
from mtl_jax.tasks import METRICS

HIGHER_IS_BETTER = {name: hib for kind in METRICS.values() for name, (_, hib) in kind.items()}

Column = tuple[str, str]  # (task, metric)


@dataclasses.dataclass
class CellResults:
    """One sweep cell: its overrides and each finished seed's results.json."""

    name: str
    overrides: dict[str, Any]
    seeds: list[int]
    runs: list[dict[str, Any]]
    error: str = ""

    def values(self, split: str, column: Column) -> list[float]:
        return [r[split][column[0]][column[1]] for r in self.runs]

    def mean(self, split: str, column: Column) -> float:
        return statistics.mean(self.values(split, column))


def load_cells(workdir: str | pathlib.Path) -> list[CellResults]:
    """Every cell under ``workdir`` in sweep order (``sweep_status.json``), with the seeds
    that finished; failed cells carry their error and no runs."""
    workdir = pathlib.Path(workdir)
    status_file = workdir / "sweep_status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    names = list(status) or sorted(p.parent.name for p in workdir.glob("*/cell.json"))
    cells = []
    for name in names:
        cell_file = workdir / name / "cell.json"
        overrides = json.loads(cell_file.read_text())["overrides"] if cell_file.exists() else {}
        seeds, runs = [], []
        for path in sorted(workdir.glob(f"{name}/seed_*/results.json")):
            seeds.append(int(path.parent.name.removeprefix("seed_")))
            runs.append(json.loads(path.read_text()))
        order = sorted(range(len(seeds)), key=seeds.__getitem__)
        error = status.get(name, "")
        cells.append(
            CellResults(
                name,
                overrides,
                [seeds[i] for i in order],
                [runs[i] for i in order],
                "" if error in ("done", "skipped", "pending", "interrupted", "") else error,
            )
        )
    if not cells:
        raise FileNotFoundError(f"no sweep cells (*/cell.json) under {workdir}")
    return cells


def metric_columns(cells: Sequence[CellResults], metrics: Sequence[str] = ()) -> list[Column]:
    """``metrics`` as ``task/metric`` strings, or every non-loss test metric of the runs."""
    if metrics:
        return [tuple(m.split("/", 1)) for m in metrics]
    example = next(c.runs[0] for c in cells if c.runs)
    return [(t, m) for t, ms in example["test"].items() for m in ms if m != "loss"]


def delta_m(
    means: dict[Column, float], reference: dict[Column, float], columns: Sequence[Column]
) -> float:
    """delta-m% of ``means`` against ``reference`` over ``columns`` (see the module doc)."""
    by_task: dict[str, list[float]] = {}
    for column in columns:
        sign = 1.0 if HIGHER_IS_BETTER[column[1]] else -1.0
        change = sign * (means[column] - reference[column]) / reference[column]
        by_task.setdefault(column[0], []).append(change)
    return 100.0 * statistics.mean(statistics.mean(v) for v in by_task.values())


def varying_keys(cells: Sequence[CellResults]) -> list[str]:
    """Override keys whose value differs between cells (the sweep's axes), in order."""
    keys: list[str] = []
    for cell in cells:
        keys += [k for k in cell.overrides if k not in keys]
    return [k for k in keys if len({repr(c.overrides.get(k)) for c in cells}) > 1]


def backward_passes(run: dict[str, Any]) -> int:
    """Backward passes through the trunk per train step (mtl_jax/step.py make_train_step):
    one for loss weighting and for Gramians at the representation; for exact whole-trunk
    gradient methods one per task (``sequential``, or its worth in one ``stacked`` pass),
    plus one when batched; with ``gramian_params``, one per task down to the chosen layers
    plus one whole."""
    c = run["config"]["balancing"]
    if c["method"] not in balancing.GRADIENT_METHODS or c.get("gramian_at") == "representation":
        return 1
    tasks = len(run["config"]["tasks"])
    model = ml_collections.ConfigDict(run["config"].get("model", {}))
    mode = stacked_grads.resolve_task_gradients(
        model,
        c.get("task_gradients", "batched"),
        c.get("gramian_params", ""),
        language_model=model.get("trunk") == "llm",
    )
    per_task_only = mode in ("sequential", "stacked") and not c.get("gramian_params")
    return tasks if per_task_only else tasks + 1


@dataclasses.dataclass
class Summary:
    """The aggregated numbers of a sweep, in the order the tables print them."""

    cells: list[CellResults]
    columns: list[Column]
    axes: list[str]
    reference: str
    rows: list[dict[str, Any]]
    selected: str  # best validation delta-m% (never the test split)


def summarize(
    cells: Sequence[CellResults], reference: str = "single_task", metrics: Sequence[str] = ()
) -> Summary:
    finished = [c for c in cells if c.runs]
    columns = metric_columns(finished, metrics)
    ref = next((c for c in finished if c.name == reference), None)
    if ref is None:
        raise ValueError(
            f"no finished reference cell {reference!r}; finished: {[c.name for c in finished]}"
        )
    ref_means = {
        split: {col: ref.mean(split, col) for col in columns} for split in ("test", "validation")
    }
    axes = varying_keys(cells)
    rows = []
    for cell in cells:
        row: dict[str, Any] = {"cell": cell.name, "seeds": len(cell.runs), "error": cell.error}
        row.update({k: cell.overrides.get(k, "") for k in axes})
        if cell.runs:
            for split in ("test", "validation"):
                means = {col: cell.mean(split, col) for col in columns}
                row[f"{split}_means"] = means
                row[f"{split}_delta_m"] = delta_m(means, ref_means[split], columns)
            row["test_stds"] = {
                col: statistics.stdev(cell.values("test", col)) if len(cell.runs) > 1 else 0.0
                for col in columns
            }
            per_seed = [
                delta_m(
                    {col: r["test"][col[0]][col[1]] for col in columns}, ref_means["test"], columns
                )
                for r in cell.runs
            ]
            row["test_delta_m_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
            first = cell.runs[0]
            row["step_ms"] = statistics.median(
                r.get("median_step_ms", float("nan")) for r in cell.runs
            )
            row["parallel_seeds"] = first.get("parallel_seeds", 1)
            row["backward_passes"] = backward_passes(first)
            memory = first.get("train_step_memory") or {}
            row["memory_mib"] = memory.get("per_device_total_mib", float("nan"))
            row["wall_s"] = max(r["wall_time_s"] for r in cell.runs) * (
                1 if row["parallel_seeds"] > 1 else len(cell.runs)
            )
            row["commits"] = sorted({reporting.short_commit(r["commit"]) for r in cell.runs})
        rows.append(row)
    scored = [r for r in rows if "validation_delta_m" in r and r["cell"] != reference]
    selected = max(scored, key=lambda r: r["validation_delta_m"])["cell"] if scored else reference
    return Summary(list(cells), columns, axes, reference, rows, selected)


def _col(column: Column) -> str:
    arrow = "↑" if HIGHER_IS_BETTER[column[1]] else "↓"
    return f"{column[0]} {column[1]} {arrow}"


def markdown(summary: Summary) -> str:
    """The table, then the selection and the failed cells, as Markdown."""
    axes = [k.rsplit(".", 1)[-1] for k in summary.axes] or ["cell"]
    header = [
        *axes,
        "seeds",
        *(_col(c) for c in summary.columns),
        "Δm% test",
        "Δm% val",
        "step ms",
        "backward/step",
        "step MiB",
    ]
    lines_rows = []
    for row in summary.rows:
        keys = [str(row[k]) for k in summary.axes] or [row["cell"]]
        if "test_means" not in row:
            what = "failed" if row["error"] else "not run"
            lines_rows.append([*keys, "0", *([what] * (len(header) - len(keys) - 1))])
            continue
        name_mark = "**" if row["cell"] == summary.selected else ""
        keys = [f"{name_mark}{k}{name_mark}" for k in keys]
        lines_rows.append(
            [
                *keys,
                str(row["seeds"]),
                *(
                    f"{row['test_means'][c]:.4f} ± {row['test_stds'][c]:.4f}"
                    for c in summary.columns
                ),
                f"{row['test_delta_m']:+.2f} ± {row['test_delta_m_std']:.2f}",
                f"{row['validation_delta_m']:+.2f}",
                f"{row['step_ms']:.1f}",
                str(row["backward_passes"]),
                f"{row['memory_mib']:.1f}",
            ]
        )
    lines = reporting.markdown_table(header, lines_rows)
    selected = next(r for r in summary.rows if r["cell"] == summary.selected)
    lines += [
        "",
        f"Test metrics of each run's best-validation checkpoint, mean ± std over seeds. Δm%: "
        f"against `{summary.reference}` over the columns shown (mean over tasks of the mean "
        "signed relative change; positive = better). Selected on validation Δm%: "
        f"**{summary.selected}** (test Δm% {selected.get('test_delta_m', float('nan')):+.2f}).",
    ]
    if any(r.get("parallel_seeds", 1) > 1 for r in summary.rows):
        lines.append(
            "step ms: median time of one train step of all the cell's seeds together (vmapped); "
            "step MiB: XLA's estimate for that step."
        )
    commits = sorted({c for r in summary.rows for c in r.get("commits", ())})
    if commits:
        lines.append(
            f"Trained at commit(s) {', '.join(commits)} (each run's results.json names its own)."
        )
    failed = [r for r in summary.rows if r["error"]]
    for row in failed:
        lines.append(f"- `{row['cell']}` failed: {row['error']}")
    return "\n".join(lines) + "\n"


def seed_delta_m(cell: CellResults, summary: Summary) -> dict[int, float]:
    """Each finished seed's test delta-m% against the reference cell's mean."""
    ref = next(c for c in summary.cells if c.name == summary.reference)
    ref_means = {col: ref.mean("test", col) for col in summary.columns}
    return {
        seed: delta_m(
            {col: run["test"][col[0]][col[1]] for col in summary.columns},
            ref_means,
            summary.columns,
        )
        for seed, run in zip(cell.seeds, cell.runs, strict=True)
    }


def paired(summary: Summary, baseline: str, column: Column | None = None) -> list[dict[str, Any]]:
    """Every finished cell against ``baseline`` on the seeds both finished: the per-seed
    differences of test delta-m% (or of the test metric ``column``, e.g. ("click", "auc")),
    their mean, 95% t interval and the number of seeds where the cell is better. The same
    seed is the same initialisation and data order, so the pair cancels what the seed alone
    moves."""
    cells = {c.name: c for c in summary.cells if c.runs}
    if baseline not in cells:
        raise ValueError(f"no finished baseline cell {baseline!r}; finished: {list(cells)}")

    def per_seed(cell: CellResults) -> dict[int, float]:
        if column is None:
            return seed_delta_m(cell, summary)
        task, metric = column
        return {s: run["test"][task][metric] for s, run in zip(cell.seeds, cell.runs, strict=True)}

    sign = 1.0 if column is None or HIGHER_IS_BETTER[column[1]] else -1.0
    base = per_seed(cells[baseline])
    out = []
    for name, cell in cells.items():
        if name in (baseline, summary.reference):
            continue
        mine = per_seed(cell)
        common = sorted(set(mine) & set(base))
        diffs = [mine[s] - base[s] for s in common]
        out.append(
            {
                "cell": name,
                "seeds": len(common),
                **reporting.paired_interval(diffs),
                "better": sum(sign * d > 0 for d in diffs),
                "differences": dict(zip(common, diffs, strict=True)),
            }
        )
    return out


def markdown_paired(
    rows: Sequence[dict[str, Any]], baseline: str, quantity: str = "Δm%", digits: int = 3
) -> str:
    """The paired comparison as Markdown, saying which intervals exclude zero."""
    header = ["cell", "paired seeds", f"{quantity} − {baseline} (mean, 95% CI)", "seeds better"]
    table = []
    for r in rows:
        beyond = r["low"] > 0 or r["high"] < 0
        mark = "**" if beyond else ""
        table.append(
            [
                r["cell"],
                str(r["seeds"]),
                f"{mark}{r['mean']:+.{digits}f} [{r['low']:+.{digits}f}, "
                f"{r['high']:+.{digits}f}]{mark}",
                f"{r['better']}/{r['seeds']}",
            ]
        )
    lines = reporting.markdown_table(header, table)
    lines += [
        "",
        f"Per seed: the cell's test {quantity} minus `{baseline}`'s with the same seed; bold: "
        "the 95% t interval excludes zero (beyond seed noise).",
    ]
    return "\n".join(lines) + "\n"


def pair_cosines(workdir: str | pathlib.Path, cell: str) -> dict[str, dict[int, list[float]]]:
    """Per task pair ("click-rating") and train-log step, the cosine between the two tasks'
    trunk gradients in each of the cell's seed logs (``cos/<a>-<b>``, which the train log
    records for every method; zeros for single-task trunks, which share nothing)."""
    out: dict[str, dict[int, list[float]]] = {}
    for log_file in sorted(pathlib.Path(workdir).glob(f"{cell}/seed_*/metrics.jsonl")):
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if record.get("split") != "train":
                continue
            for key, value in record.items():
                if key.startswith("cos/"):
                    out.setdefault(key[4:], {}).setdefault(record["step"], []).append(value)
    return out


def markdown_conflict(summary: Summary, workdir: str | pathlib.Path) -> str:
    """How much the tasks' trunk gradients conflict in each cell that logs them: per task
    pair, the mean cosine over logged steps and seeds, and the share of (step, seed) logs
    where it is negative. Single-task cells (all zeros) are left out; empty when no cell
    logged cosines."""
    per_cell = {}  # cell -> pair -> every logged cosine (steps and seeds together)
    for row in summary.rows:
        by_pair = {
            pair: [v for values in by_step.values() for v in values]
            for pair, by_step in pair_cosines(workdir, row["cell"]).items()
        }
        # Single-task trunks share nothing: their cosines are all exactly zero.
        if any(v != 0.0 for values in by_pair.values() for v in values):
            per_cell[row["cell"]] = by_pair
    if not per_cell:
        return ""
    pairs = list(dict.fromkeys(p for by_pair in per_cell.values() for p in by_pair))
    table = []
    for cell, by_pair in per_cell.items():
        row = [cell]
        for pair in pairs:
            values = by_pair.get(pair, [])
            if not values:
                row.append("")
                continue
            negative = sum(v < 0 for v in values) / len(values)
            row.append(f"{statistics.mean(values):+.3f} ({negative:.0%} < 0)")
        table.append(row)
    lines = reporting.markdown_table(["cell", *[f"cos {p}" for p in pairs]], table)
    lines += [
        "",
        "Cosine between two tasks' gradients with respect to the shared trunk, at each "
        "train-log step of each seed: mean over those logs (share of them below zero). "
        "Negative = the tasks pull the trunk in conflicting directions.",
    ]
    return "\n".join(lines) + "\n"


def write_csv(summary: Summary, path: str | pathlib.Path) -> None:
    """One row per cell, means and stds in separate columns (for spreadsheets and pandas)."""
    fields = ["cell", *summary.axes, "seeds"]
    for c in summary.columns:
        fields += [f"{c[0]}/{c[1]}/mean", f"{c[0]}/{c[1]}/std"]
    fields += [
        "test_delta_m", "test_delta_m_std", "validation_delta_m", "step_ms",
        "parallel_seeds", "backward_passes", "memory_mib", "wall_s", "error",
    ]  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for row in summary.rows:
            out = dict(row)
            for c in summary.columns:
                if "test_means" in row:
                    out[f"{c[0]}/{c[1]}/mean"] = row["test_means"][c]
                    out[f"{c[0]}/{c[1]}/std"] = row["test_stds"][c]
            writer.writerow(out)


def latex(summary: Summary) -> str:
    """A booktabs tabular of the Markdown table's numbers (selected row in bold)."""
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%")
    axes = [k.rsplit(".", 1)[-1] for k in summary.axes] or ["cell"]
    header = [
        *axes,
        *(
            f"{c[0]} {c[1]} $\\{'uparrow' if HIGHER_IS_BETTER[c[1]] else 'downarrow'}$"
            for c in summary.columns
        ),
        r"$\Delta_m$\% test",
        r"$\Delta_m$\% val",
        "step ms",
    ]
    lines = [
        r"\begin{tabular}{" + "l" * len(axes) + "r" * (len(header) - len(axes)) + "}",
        r"\toprule",
        " & ".join(esc(h) if "$" not in h else h for h in header) + r" \\",
        r"\midrule",
    ]
    for row in summary.rows:
        if "test_means" not in row:
            continue
        bold = (lambda s: f"\\textbf{{{s}}}") if row["cell"] == summary.selected else (lambda s: s)
        keys = [esc(row[k]) for k in summary.axes] or [esc(row["cell"])]
        cells = [
            *keys,
            *(
                f"{row['test_means'][c]:.4f} $\\pm$ {row['test_stds'][c]:.4f}"
                for c in summary.columns
            ),
            f"{row['test_delta_m']:+.2f} $\\pm$ {row['test_delta_m_std']:.2f}",
            f"{row['validation_delta_m']:+.2f}",
            f"{row['step_ms']:.1f}",
        ]
        lines.append(" & ".join(bold(x) for x in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(
    summary: Summary, workdir: str | pathlib.Path, stem: str = "table"
) -> list[pathlib.Path]:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` in ``workdir``, and ``conflict.md``
    where cells logged gradient cosines; returns their paths."""
    workdir = pathlib.Path(workdir)
    paths = [workdir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    paths[0].write_text(markdown(summary))
    write_csv(summary, paths[1])
    paths[2].write_text(latex(summary))
    conflict = markdown_conflict(summary, workdir)
    if conflict:
        paths.append(workdir / "conflict.md")
        paths[-1].write_text(conflict)
    return paths
