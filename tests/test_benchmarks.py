"""Every benchmark script runs, end to end, on a tiny config, and prints its JSON lines:
a benchmark that no test runs rots (bench_balancing once stopped at ``static``)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from mtl_jax import balancing, benchmark
from tests.helpers import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = [
    "--config=configs/ecommerce.py:smoke",
    "--config.data.num_impressions=3000",
    "--config.data.num_users=100",
    "--config.data.num_items=60",
]


def _bench(script, *flags, devices=1):
    env = subprocess_env(devices)
    cmd = [sys.executable, f"experiments/{script}", *flags]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.parametrize("per_dispatch", [1, 2])
def test_bench_throughput_prints_its_measurement(tmp_path, per_dispatch):
    out = tmp_path / "t.jsonl"
    (line,) = _bench(
        "bench_throughput.py", *TINY, "--batch_size=64", "--steps=2", "--repeats=1",
        f"--steps_per_dispatch={per_dispatch}", f"--out={out}",
    )  # fmt: skip
    assert line["steps_per_dispatch"] == per_dispatch
    for key in ("train_examples_per_s", "step_examples_per_s", "pipeline_examples_per_s"):
        assert line[key] > 0
    assert json.loads(out.read_text()) == line


@pytest.mark.slow
def test_bench_balancing_runs_methods_of_every_kind(tmp_path):
    """A loss-weighting method with required kwargs (``static``, which once broke the
    default invocation) and two gradient methods: one line each with its
    scope and cost against ew (every method compiles in one process: minutes, so the
    default all-methods run is left to the benchmark itself)."""
    out = tmp_path / "b.jsonl"
    methods = ["static", "pcgrad", "db_mtl"]
    lines = _bench(
        "bench_balancing.py", *TINY, "--batch_size=64", "--steps=1", "--repeats=1",
        f"--methods={','.join(methods)}", "--scopes=trunk,representation", f"--out={out}",
    )  # fmt: skip
    scopes = [(line["method"], line["scope"]) for line in lines]
    assert scopes == [
        ("ew", "loss"), ("static", "loss"), ("pcgrad", "trunk"),
        ("pcgrad", "representation"), ("db_mtl", "trunk"),  # db_mtl combines trunk gradients
    ]  # fmt: skip
    assert set(methods) <= set(balancing.names())
    assert lines[0]["ratio_vs_ew"] == 1.0
    assert all(line["step_ms"] > 0 for line in lines)
    assert len(out.read_text().splitlines()) == len(lines)


@pytest.mark.slow
def test_bench_task_grads_checks_and_times_every_form(tmp_path):
    """All four programs on the MMoE smoke model (stacked included: no dropout there), the
    per-task forms checked against batched before they are timed."""
    out = tmp_path / "t.jsonl"
    lines = _bench(
        "bench_task_grads.py", *TINY, "--config.model.dropout=0.0", "--batch_size=64",
        "--steps=1", "--repeats=1", f"--out={out}",
    )  # fmt: skip
    assert [line["program"] for line in lines] == [
        "one_backward", "batched", "sequential", "stacked"
    ]  # fmt: skip
    assert all(line["ms"] > 0 and line["mflop"] > 0 for line in lines)
    assert all(line["max_relative_difference_vs_batched"] < 1e-4 for line in lines[1:])
    assert len(out.read_text().splitlines()) == len(lines)


@pytest.mark.slow
def test_bench_scaling_runs_both_sweeps(tmp_path):
    lines = _bench(
        "bench_scaling.py", *TINY, "--batch_size=64", "--devices=1,2", "--table_rows=1000",
        "--table_meshes=1x2", "--steps=1", "--repeats=1", f"--out={tmp_path / 's.jsonl'}",
        devices=2,
    )  # fmt: skip
    assert len(lines) == 3 and all(line["examples_per_s"] > 0 for line in lines)


@pytest.mark.slow
def test_bench_embeddings_prints_dense_and_sparse_lines(tmp_path):
    out = tmp_path / "e.jsonl"
    lines = _bench(
        "bench_embeddings.py", *TINY, "--batch_size=64", "--rows=500,3000", "--meshes=1x2",
        "--dense_max_rows=1000", "--steps=1", "--repeats=1", f"--out={out}", devices=2,
    )  # fmt: skip
    got = [(line["rows"], line["mesh"], line["sparse"]) for line in lines]
    assert got == [(500, "1x2", False), (500, "1x2", True), (3000, "1x2", True)]
    assert all(line["step_ms"] > 0 and line["state_mib_per_device"] > 0 for line in lines)
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines


@pytest.mark.slow
def test_bench_input_generates_prepares_and_trains(tmp_path):
    out = tmp_path / "i.jsonl"
    lines = _bench(
        "bench_input.py", "--rows=20000", "--batch_size=256", "--loader_batches=5",
        "--train_steps=8", "--shards=2", f"--dir={tmp_path / 'd'}", f"--out={out}",
    )  # fmt: skip
    assert [line["stage"] for line in lines] == ["generate", "prepare", "train"]
    splits = lines[1]["splits"]
    assert splits["train"] + splits["validation"] == 20000 and splits["test"] == 2000
    assert lines[2]["train_rows"] == splits["train"]
    for key in ("loader_examples_per_s", "step_examples_per_s", "peak_rss_mib"):
        assert lines[2][key] > 0
    assert 0 <= lines[2]["test_click_auc"] <= 1
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines


@pytest.mark.slow
def test_bench_serving_measures_every_mode(tmp_path):
    from mtl_jax import parallel
    from mtl_jax.data import load_dataset
    from mtl_jax.serving import export_trainer
    from mtl_jax.train import Trainer
    from tests.helpers import tiny_config

    config = tiny_config()
    trainer = Trainer(config, load_dataset(config.data, config.seed), mesh=parallel.make_mesh(1))
    export_trainer(trainer, trainer.init_state().params, tmp_path / "m")
    out = tmp_path / "s.jsonl"
    lines = _bench(
        "bench_serving.py", f"--model={tmp_path / 'm'}", "--batches=1,8", "--calls=5",
        "--candidates=30", "--clients=1,3", "--requests=12", f"--out={out}",
    )  # fmt: skip
    got = [(line["mode"], line["batch"], line["clients"]) for line in lines]
    assert got == [("inprocess", 1, 0), ("inprocess", 8, 0), ("rank", 30, 0), ("rank", 30, 0),
                   ("http", 1, 1), ("http", 1, 3)]  # fmt: skip
    for line in lines:
        assert line["errors"] == 0 and 0 < line["p50_ms"] <= line["p99_ms"]
    assert [line["requests"] for line in lines[-2:]] == [12, 12]
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines


@pytest.mark.slow
def test_bench_text_runs(tmp_path, text_encoder):
    from mtl_jax.data import movielens

    try:
        movielens.fetch()
    except movielens.FetchError as e:
        pytest.skip(f"no route to MovieLens-100K here: {e}")
    lines = _bench(
        "bench_text.py", "--limit=16", "--repeats=1", "--reference_python=none",
        f"--out={tmp_path / 'x.jsonl'}",
    )  # fmt: skip
    assert len(lines) == 2
    for line in lines:
        assert line["packed_sentences_per_s"] > 0 and line["bucketed_sentences_per_s"] > 0
        assert line["packed_vs_bucketed_max_abs_diff"] < 1e-5  # the same embeddings


@pytest.mark.slow
def test_device_check_script_runs_its_benchmarks_and_records_the_commit(tmp_path):
    """experiments/device_check.sh, the GPU check prepared for a lent device, runs here on
    the CPU with a tiny config: a JSON line for its (method, batch), the device recorded, and
    the commit a copy of the tree without .git is told through MTL_JAX_COMMIT."""
    env = {
        **subprocess_env(),
        "CONFIG": TINY[0].removeprefix("--config="),
        "EXTRA_FLAGS": " ".join(TINY[1:]),
        "METHODS": "pcgrad",
        "BATCHES": "48",
        "STEPS": "2",
        "REPEATS": "1",
        "PER_DISPATCH": "2",
        "PYTHON": sys.executable,
        "MTL_JAX_COMMIT": "feedc0de",
        "WHEEL_DIR": str(tmp_path / "no_wheels"),  # the GPU image's wheels are not for here
    }
    cmd = ["bash", "experiments/device_check.sh", "run", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "gpu_throughput.jsonl").read_text().splitlines()]
    assert [line["batch_size"] for line in lines] == [48]
    assert all(line["commit"] == "feedc0de" and line["step_examples_per_s"] > 0 for line in lines)
    assert "CpuDevice" in (tmp_path / "device.txt").read_text()


def test_device_check_script_refuses_an_unknown_verb():
    result = subprocess.run(
        ["bash", "experiments/device_check.sh", "serve"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage" in result.stderr


def test_matmuls_reads_every_dot_of_a_compiled_program_with_its_flops():
    """The HLO inventory behind profile_step's ``matmuls alone``: a transposed matmul feeding
    a fusion and a batched einsum are both found, with the FLOPs counted by hand."""
    a, b = jnp.ones((64, 32)), jnp.ones((48, 32))
    c, d = jnp.ones((5, 64, 7)), jnp.ones((5, 7, 3))
    fn = jax.jit(lambda a, b, c, d: (jax.nn.relu(a @ b.T).sum(), jnp.einsum("bij,bjk->bik", c, d)))
    found = benchmark.matmuls(fn.lower(a, b, c, d).compile().as_text())
    by_lhs = {mm.lhs: (mm, count) for mm, count in found.items()}
    assert set(by_lhs) == {(64, 32), (5, 64, 7)}
    (plain, n1), (batched, n2) = by_lhs[(64, 32)], by_lhs[(5, 64, 7)]
    assert (n1, n2) == (1, 1)
    assert plain.rhs == (48, 32) and plain.flops == 2 * 64 * 48 * 32
    assert batched.batch == ((0,), (0,)) and batched.flops == 2 * 5 * 64 * 7 * 3
    rows = benchmark.time_matmuls_alone(found, repeats=1, calls=2)
    assert sorted(r["flops"] for r in rows) == sorted(mm.flops for mm in found)
    assert all(r["seconds"] > 0 for r in rows)


@pytest.mark.slow
def test_profile_step_times_stages_and_the_step_matmuls_alone(tmp_path):
    out = tmp_path / "p.jsonl"
    lines = _bench(
        "profile_step.py", *TINY, "--batch_size=64", "--steps=1", "--repeats=1",
        "--methods=ew", f"--out={out}",
    )  # fmt: skip
    stages = [line["stage"] for line in lines]
    assert stages == ["forward", "backward", "step", "matmuls alone"]
    step, alone = lines[2], lines[3]
    # Every matmul of the step is counted (XLA's FLOPs for the step include them and more).
    assert 0 < alone["gflop"] <= step["gflop"]
    assert sum(m["count"] * m["mflop"] for m in alone["matmuls"]) == pytest.approx(
        alone["gflop"] * 1e3
    )
