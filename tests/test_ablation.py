"""Sweeps and their aggregation: delta-m% by hand, the Pareto front by brute force, cell
bookkeeping with stand-in trainers, and the smoke sweep end to end through ablate.py."""

import csv
import itertools
import json
import pathlib
import subprocess
import sys

import pytest

from mtl_jax import ablation, sweeps
from mtl_jax.ablation_plots import pareto_front
from mtl_jax.configlib import ConfigError
from tests.helpers import SMALL_RUN_FLAGS, tiny_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_delta_m_by_hand():
    columns = [("a", "auc"), ("a", "logloss"), ("b", "rmse")]
    ref = {("a", "auc"): 0.75, ("a", "logloss"): 0.5, ("b", "rmse"): 1.0}
    cell = {("a", "auc"): 0.8, ("a", "logloss"): 0.4, ("b", "rmse"): 1.1}
    # task a: (+6.667% + 20%) / 2 = +13.333%; task b: -10%; mean over tasks.
    assert ablation.delta_m(cell, ref, columns) == pytest.approx((40 / 3 - 10) / 2)
    assert ablation.delta_m(ref, ref, columns) == 0.0


def test_paired_differences_by_hand():
    """Seed-by-seed delta-m% differences against a baseline cell, their mean, t interval
    and wins, computed here from the metrics directly."""

    def run(auc: float) -> dict:
        m = {"click": {"auc": auc}, "rating": {"rmse": 2.0 - auc}}  # lower is better
        return {"test": m, "validation": m, "config": {"balancing": {"method": "ew"}, "tasks": []},
                "commit": "0" * 12, "wall_time_s": 1.0}  # fmt: skip

    ref = ablation.CellResults("single_task", {}, [0, 1, 2], [run(0.8)] * 3)
    base = ablation.CellResults("mmoe-ew", {}, [0, 1, 2], [run(a) for a in (0.80, 0.82, 0.81)])
    # Seed 3 has no baseline partner: it is left out of the pairs.
    other = ablation.CellResults(
        "mmoe-pcgrad", {}, [0, 1, 2, 3], [run(a) for a in (0.81, 0.84, 0.80, 0.9)]
    )
    summary = ablation.summarize([ref, base, other], metrics=["click/auc"])
    (row,) = ablation.paired(summary, "mmoe-ew")
    diffs = [100 * (a - b) / 0.8 for a, b in ((0.81, 0.80), (0.84, 0.82), (0.80, 0.81))]
    assert row["seeds"] == 3 and row["better"] == 2
    assert row["mean"] == pytest.approx(sum(diffs) / 3)
    import statistics

    from scipy import stats

    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / 3**0.5
    assert row["low"] == pytest.approx(sum(diffs) / 3 - half)
    assert row["high"] == pytest.approx(sum(diffs) / 3 + half)
    text = ablation.markdown_paired([row], "mmoe-ew")
    assert "mmoe-pcgrad" in text and "2/3" in text and "**" not in text.splitlines()[2]
    with pytest.raises(ValueError, match="no finished baseline cell 'nope'"):
        ablation.paired(summary, "nope")
    # One metric on its own: raw differences, "better" in the metric's own direction.
    for column, sign in ((("click", "auc"), 1), (("rating", "rmse"), -1)):
        (row,) = ablation.paired(summary, "mmoe-ew", column)
        assert list(row["differences"].values()) == pytest.approx(
            [sign * d for d in (0.01, 0.02, -0.01)]
        )
        assert row["better"] == 2
    text = ablation.markdown_paired([row], "mmoe-ew", "rating rmse", digits=4)
    assert "rating rmse − mmoe-ew" in text and "-0.0067 [" in text


def test_conflict_table_by_hand(tmp_path):
    """Per cell and task pair: the mean logged cosine over steps and seeds, and the share
    of those logs below zero; cells that log none, or only zeros (single-task), are left
    out."""

    def log(cell, seed, records):
        path = tmp_path / cell / f"seed_{seed}" / "metrics.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    train = {"split": "train", "loss": 1.0}
    log("mmoe-pcgrad", 0, [{**train, "step": 1, "cos/a-b": -0.5, "cos/a-c": 0.2},
                           {"split": "validation", "step": 1, "cos/a-b": 9.0},
                           {**train, "step": 2, "cos/a-b": 0.1, "cos/a-c": 0.4}])  # fmt: skip
    log("mmoe-pcgrad", 1, [{**train, "step": 1, "cos/a-b": -0.2, "cos/a-c": 0.3}])
    log("mmoe-ew", 0, [{**train, "step": 1}])
    log("single_task", 0, [{**train, "step": 1, "cos/a-b": 0.0, "cos/a-c": 0.0}])
    assert ablation.pair_cosines(tmp_path, "mmoe-pcgrad") == {
        "a-b": {1: [-0.5, -0.2], 2: [0.1]},
        "a-c": {1: [0.2, 0.3], 2: [0.4]},
    }
    cells = ("single_task", "mmoe-ew", "mmoe-pcgrad")
    summary = type("S", (), {"rows": [{"cell": c} for c in cells]})()
    lines = ablation.markdown_conflict(summary, tmp_path).splitlines()
    assert lines[0] == "| cell | cos a-b | cos a-c |"
    assert lines[2] == "| mmoe-pcgrad | -0.200 (67% < 0) | +0.300 (0% < 0) |"
    assert len([line for line in lines if line.startswith("| mmoe")]) == 1
    summary.rows = [{"cell": "mmoe-ew"}]
    assert ablation.markdown_conflict(summary, tmp_path) == ""


def test_pareto_front_matches_brute_force():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.2), (0.1, 0.9)]
    expected = [
        i
        for i, p in enumerate(points)
        if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)
    ]
    assert pareto_front(points) == expected == [0, 1, 3, 5]


def test_overrides_name_the_valid_keys():
    config = tiny_config()
    out = sweeps.apply_overrides(config, {"model.trunk": "ple", "model.tower_hidden": [8]})
    assert out.model.trunk == "ple" and out.model.tower_hidden == (8,)
    assert config.model.trunk == "mmoe"  # the base config is untouched
    with pytest.raises(ConfigError, match=r"config.model.trunkk.*valid keys of config.model"):
        sweeps.apply_overrides(config, {"model.trunkk": "ple"})
    with pytest.raises(ConfigError, match="model.trunk"):
        sweeps.apply_overrides(config, {"model.trunk": "no_such_trunk"})


def test_sweep_sources(tmp_path):
    config = tiny_config()
    cells = sweeps.load_sweep("smoke", config)
    assert [c.name for c in cells] == ["single_task", "mmoe-ew", "mmoe-pcgrad"]
    assert cells[1].overrides["train.num_steps"] == 12  # the file's common() applies
    grid = sweeps.load_sweep("arch_x_method", config)
    assert len(grid) == 1 + 4 * 10
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "from tests.helpers import tiny_config\n"
        "def get_config(arg=None):\n    return tiny_config()\n"
        "def sweep(name):\n"
        "    if name == 'depth':\n"
        "        return [{'model.trunk_hidden': (8,)}, {'model.trunk_hidden': (8, 8)}]\n"
    )
    mine = sweeps.load_sweep("depth", config, str(config_file))
    assert [c.name for c in mine] == ["8", "8_8"]
    with pytest.raises(ConfigError, match="arch_x_method"):  # lists the sweeps there are
        sweeps.load_sweep("nope", config, str(config_file))
    bad = tmp_path / "bad.py"
    bad.write_text("def sweep(c):\n    return [{'seed': 1}, {'seed': 1}]\n")
    with pytest.raises(ConfigError, match="several cells"):
        sweeps.load_sweep(str(bad), config)


def _fake_results(config, seed: int, value: float) -> dict:
    metrics = {"click": {"auc": value, "logloss": 1.0 - value, "loss": 0.0}}
    return {
        "config": {"balancing": {"method": config.balancing.method}, "tasks": ["click", "x"]},
        "commit": "0123456789ab",
        "test": metrics,
        "validation": metrics,
        "wall_time_s": 1.0,
        "median_step_ms": 2.0 + seed,
    }


def test_run_sweep_resumes_stops_when_preempted_and_survives_a_failing_cell(tmp_path):
    config = tiny_config()
    cells = [
        sweeps.Cell("single_task", {"balancing.method": "ew"}),
        sweeps.Cell("good", {"balancing.method": "pcgrad"}),
        sweeps.Cell("broken", {"balancing.method": "uw"}),
    ]
    trained, preempt = [], [("pcgrad", 1)]

    def train_one(cell_config, seed, seed_dir):
        method = cell_config.balancing.method
        if method == "uw":
            raise FloatingPointError("diverged")
        if (method, seed) in preempt:  # SIGTERM: checkpoints and returns without results
            preempt.remove((method, seed))
            return None
        trained.append((method, seed))
        value = 0.7 if method == "ew" else 0.77
        seed_dir.mkdir(parents=True, exist_ok=True)
        (seed_dir / "results.json").write_text(json.dumps(_fake_results(cell_config, seed, value)))

    run = lambda: sweeps.run_sweep(
        config, cells, [0, 1], tmp_path, parallel_seeds=False, train_one=train_one,
        train_together=None,
    )  # fmt: skip
    status = run()
    assert status == {"single_task": "done", "good": "interrupted", "broken": "pending"}
    assert json.loads((tmp_path / "sweep_status.json").read_text()) == status
    status = run()  # resumes the interrupted cell, then goes on past the failing one
    assert status["single_task"] == "skipped" and status["good"] == "done"
    assert "diverged" in status["broken"] and (tmp_path / "broken/error.txt").exists()
    assert trained == [("ew", 0), ("ew", 1), ("pcgrad", 0), ("pcgrad", 1)]
    status = run()  # only the failed cell is tried again
    assert status["single_task"] == status["good"] == "skipped"
    assert len(trained) == 4

    summary = ablation.summarize(ablation.load_cells(tmp_path))
    good = next(r for r in summary.rows if r["cell"] == "good")
    # click auc +10%, logloss 0.23 vs 0.3 -> +23.33%: one task, so their mean.
    assert good["test_delta_m"] == pytest.approx((10 + 70 / 3) / 2)
    assert good["backward_passes"] == 3 and good["step_ms"] == 2.5  # PCGrad, batched: T + 1
    assert summary.selected == "good"
    table = ablation.markdown(summary)
    assert "`broken` failed: FloatingPointError: diverged" in table
    assert "Trained at commit(s) 0123456 (each run's" in table  # provenance


def _parse_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]
    return split(lines[0]), [split(line) for line in lines[2:]]


@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path):
    """ablate.py on the smoke sweep: every cell trained (seeds vmapped, two cells at a time
    in worker processes), the tables' delta-m% recomputes from their own columns, plots
    written, a rerun trains nothing."""
    workdir = tmp_path / "ablate"
    command = [
        sys.executable,
        "experiments/ablate.py",
        *SMALL_RUN_FLAGS,
        "--config.data_seed=0",
        "--sweep=smoke",
        "--seeds=2",
        f"--workdir={workdir}",
    ]
    done = subprocess.run(
        [*command, "--jobs=2"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for cell, seed in itertools.product(("single_task", "mmoe-ew", "mmoe-pcgrad"), (0, 1)):
        results = json.loads((workdir / cell / f"seed_{seed}/results.json").read_text())
        assert results["config"]["seed"] == seed and results["parallel_seeds"] == 2
        assert results["steps_trained"] == 12
    for name in ("table.md", "table.csv", "table.tex", "metrics.png", "pareto.png", "conflict.png"):
        assert (workdir / name).stat().st_size > 0, name
    conflict_rows = (workdir / "conflict.md").read_text().splitlines()[2:]
    cells = [r.split(" | ")[0] for r in conflict_rows if r.startswith("|")]
    assert cells == ["| mmoe-ew", "| mmoe-pcgrad"]  # single-task trunks share nothing

    header, rows = _parse_markdown((workdir / "table.md").read_text())
    columns = [h for h in header if h.endswith(("↑", "↓"))]
    mean = lambda text: float(text.split("±")[0])
    by_cell = {(r[0].strip("*"), r[1].strip("*")): r for r in rows}
    ref = by_cell[("single_task", "ew")]
    for row in rows:
        by_task: dict[str, list[float]] = {}
        for col in columns:
            i = header.index(col)
            sign = 1 if col.endswith("↑") else -1
            change = sign * (mean(row[i]) - mean(ref[i])) / mean(ref[i])
            by_task.setdefault(col.split()[0], []).append(change)
        expected = 100 * sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
        assert mean(row[header.index("Δm% test")]) == pytest.approx(expected, abs=0.1)
    assert mean(ref[header.index("Δm% test")]) == 0.0
    with open(workdir / "table.csv") as f:
        assert [r["cell"] for r in csv.DictReader(f)] == ["single_task", "mmoe-ew", "mmoe-pcgrad"]
    assert r"\toprule" in (workdir / "table.tex").read_text()

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    status = json.loads((workdir / "sweep_status.json").read_text())
    assert set(status.values()) == {"skipped"}


COMMITTED_TABLES = sorted((REPO / "experiments" / "results").glob("ablation_*.csv"))


@pytest.mark.parametrize("table", COMMITTED_TABLES, ids=lambda p: p.stem)
def test_committed_tables_delta_m_recomputes_from_their_own_columns(table):
    """experiments/results: each row's test delta-m% from the per-task means beside it."""
    rows = list(csv.DictReader(table.open()))
    columns = [tuple(k[: -len("/mean")].split("/", 1)) for k in rows[0] if k.endswith("/mean")]
    means = [{c: float(row[f"{c[0]}/{c[1]}/mean"]) for c in columns} for row in rows]
    reference = next(m for m, row in zip(means, rows, strict=True) if row["cell"] == "single_task")
    assert len(rows) >= 10 and len({c[0] for c in columns}) >= 2
    for row, cell in zip(rows, means, strict=True):
        recomputed = ablation.delta_m(cell, reference, columns)
        assert float(row["test_delta_m"]) == pytest.approx(recomputed, abs=1e-9), row["cell"]
