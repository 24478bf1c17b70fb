"""Plots of a sweep (matplotlib, PNG): per-metric bars with error bars, a two-metric Pareto
scatter, and the gradient-conflict cosine over training per cell."""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Sequence

import numpy as np

from mtl_jax.ablation import HIGHER_IS_BETTER, Column, Summary, pair_cosines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(summary: Summary) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Bars are grouped by the last sweep axis (e.g. method) and coloured by the first
    (e.g. trunk); a one-axis sweep has one colour."""
    finished = [r for r in summary.rows if "test_means" in r]
    if len(summary.axes) >= 2:
        hue_key, x_key = summary.axes[0], summary.axes[-1]
        key = lambda r: (str(r[hue_key]), str(r[x_key]))
    else:
        key = lambda r: ("", r["cell"])
    by = {key(r): r for r in finished}
    hues = list(dict.fromkeys(k[0] for k in by))
    xs = list(dict.fromkeys(k[1] for k in by))
    return hues, xs, by


def metric_bars(summary: Summary, path: str | pathlib.Path) -> None:
    """One panel per metric column: mean over seeds with +- std error bars."""
    plt = _pyplot()
    hues, xs, by = _groups(summary)
    n = len(summary.columns)
    ncols = 2 if n > 3 else 1
    nrows = -(-n // ncols)
    width_in = max(6.0, 0.18 * len(xs) * max(1, len(hues)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes = axes.flat[:n]
    width = 0.8 / max(1, len(hues))
    for ax, column in zip(axes, summary.columns, strict=True):
        for h, hue in enumerate(hues):
            pos, means, stds = [], [], []
            for i, x in enumerate(xs):
                row = by.get((hue, x))
                if row is not None:
                    pos.append(i + (h - (len(hues) - 1) / 2) * width)
                    means.append(row["test_means"][column])
                    stds.append(row["test_stds"][column])
            ax.bar(pos, means, width, yerr=stds, capsize=2, label=hue or None)
        values = [r["test_means"][column] for r in by.values()]
        spread = max(values) - min(values) or abs(max(values)) * 0.01 or 0.01
        ax.set_ylim(min(values) - 1.5 * spread, max(values) + 1.5 * spread)
        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=8)
        better = "higher" if HIGHER_IS_BETTER[column[1]] else "lower"
        ax.set_ylabel(f"{column[0]} {column[1]}\n({better} is better)", fontsize=8)
    if any(hues):
        axes[0].legend(fontsize=7, ncol=min(5, len(hues)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher = better)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any(
            (c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _styles(summary: Summary) -> dict[str, tuple[str, str, str]]:
    """Per cell: (colour, marker, label). Two-axis sweeps: colour by the last axis (e.g.
    method), marker by the first (e.g. trunk), so 41 cells stay tellable apart."""
    plt = _pyplot()
    palette = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    rows = [r for r in summary.rows if "test_means" in r]
    if len(summary.axes) < 2:
        return {r["cell"]: (palette[i % 20], "o", r["cell"]) for i, r in enumerate(rows)}
    first, last = summary.axes[0], summary.axes[-1]
    colours = {v: palette[i % 20] for i, v in enumerate(dict.fromkeys(str(r[last]) for r in rows))}
    shapes = {v: markers[i % 12] for i, v in enumerate(dict.fromkeys(str(r[first]) for r in rows))}
    return {
        r["cell"]: (colours[str(r[last])], shapes[str(r[first])], f"{r[first]} / {r[last]}")
        for r in rows
    }


def pareto(summary: Summary, x: Column, y: Column, path: str | pathlib.Path) -> None:
    """Each cell's mean on two metrics (large marker) and its seeds (small); the Pareto
    front of the means is outlined. Axes point towards "better"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    rows = [r for r in summary.rows if "test_means" in r]
    sign = lambda c: 1.0 if HIGHER_IS_BETTER[c[1]] else -1.0
    cells = {c.name: c for c in summary.cells}
    styles = _styles(summary)
    means = []
    for row in rows:
        cell = cells[row["cell"]]
        colour, marker, label = styles[row["cell"]]
        px, py = row["test_means"][x], row["test_means"][y]
        means.append((sign(x) * px, sign(y) * py))
        ax.plot([px], [py], marker, color=colour, markersize=8, label=label)
        ax.plot(
            cell.values("test", x), cell.values("test", y), marker, color=colour,
            markersize=3, alpha=0.4,
        )  # fmt: skip
    for i in pareto_front(means):
        ax.plot(
            [rows[i]["test_means"][x]], [rows[i]["test_means"][y]], "o", markersize=15,
            markerfacecolor="none", markeredgecolor="black",
        )  # fmt: skip
    if not HIGHER_IS_BETTER[x[1]]:
        ax.invert_xaxis()
    if not HIGHER_IS_BETTER[y[1]]:
        ax.invert_yaxis()
    ax.set_xlabel(f"{x[0]} {x[1]} (better →)")
    ax.set_ylabel(f"{y[0]} {y[1]} (better ↑)")
    ax.set_title("Test metrics: cell means (seeds small); circled = Pareto front", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def conflict_curves(
    summary: Summary, workdir: str | pathlib.Path
) -> dict[str, tuple[list[int], list[float]]]:
    """Per cell: the train-log steps and the mean over task pairs and seeds of the cosine
    between the tasks' trunk gradients (negative = conflicting)."""
    out = {}
    for row in summary.rows:
        per_step: dict[int, list[float]] = {}
        for by_step in pair_cosines(workdir, row["cell"]).values():
            for step, values in by_step.items():
                per_step.setdefault(step, []).extend(values)
        if per_step:
            steps = sorted(per_step)
            out[row["cell"]] = (steps, [statistics.mean(per_step[s]) for s in steps])
    return out


def conflict(summary: Summary, workdir: str | pathlib.Path, path: str | pathlib.Path) -> None:
    """Gradient-conflict cosine over training, one line per cell, a panel per value of the
    first sweep axis (e.g. per trunk)."""
    plt = _pyplot()
    curves = conflict_curves(summary, workdir)
    panel_key = summary.axes[0] if len(summary.axes) >= 2 else None
    panels = list(dict.fromkeys(str(r[panel_key]) if panel_key else "" for r in summary.rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels, strict=True):
        for row in summary.rows:
            if row["cell"] not in curves or (panel_key and str(row[panel_key]) != panel):
                continue
            label = str(row[summary.axes[-1]]) if summary.axes else row["cell"]
            ax.plot(*curves[row["cell"]], label=label, linewidth=1)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(panel or "all cells", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("mean pairwise cos of task trunk grads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    summary: Summary, workdir: str | pathlib.Path, pareto_columns: Sequence[Column] = ()
) -> list[pathlib.Path]:
    """``metrics.png``, ``pareto.png`` (the first metric of the first two tasks unless
    given) and ``conflict.png`` in ``workdir``."""
    workdir = pathlib.Path(workdir)
    first_per_task: dict[str, Column] = {}
    for column in summary.columns:
        first_per_task.setdefault(column[0], column)
    x, y = (list(pareto_columns) or list(first_per_task.values()) or summary.columns)[:2]
    paths = [workdir / name for name in ("metrics.png", "pareto.png", "conflict.png")]
    metric_bars(summary, paths[0])
    pareto(summary, x, y, paths[1])
    conflict(summary, workdir, paths[2])
    return paths
