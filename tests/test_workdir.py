"""One owner per workdir (a live owner refuses a second process; a dead one's lock is
recovered), and the default workdir of run.py."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from mtl_jax.workdir import WorkdirBusyError, WorkdirLock, default_workdir
from tests.helpers import SMALL_RUN_FLAGS, subprocess_env, tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from mtl_jax.workdir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("configs/ecommerce.py", "runs/ecommerce"),
        ("configs/ecommerce.py:smoke", "runs/ecommerce_smoke"),
        ("/abs/path/movielens.py:cold_text", "runs/movielens_cold_text"),
        ("my cfg.py:a/b", "runs/my_cfg_a_b"),
    ],
)
def test_default_workdir_is_runs_slash_config_and_variant(spec, expected):
    assert default_workdir(spec) == pathlib.Path(expected)


def test_a_live_owner_refuses_a_second_process_and_a_killed_owner_does_not(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError, match=rf"in use by process {proc.pid} on host"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead owner's lock; the file it left names it, harmlessly.
    assert str(proc.pid) in (tmp_path / ".lock").read_text()
    with WorkdirLock(tmp_path):
        owner = json.loads((tmp_path / ".lock").read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(WorkdirBusyError):  # the same process, a second time: refused too
            WorkdirLock(tmp_path).__enter__()
    with WorkdirLock(tmp_path):  # released on exit
        pass


def test_training_on_a_busy_workdir_fails_before_writing_anything(tmp_path):
    from mtl_jax.train import train_and_evaluate

    (tmp_path / "metrics.jsonl").write_text('{"step": 5}\n')
    proc = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError, match=str(proc.pid)):
            train_and_evaluate(tiny_config(), str(tmp_path))
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "metrics.jsonl"]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 5}\n'


@pytest.mark.slow
def test_run_without_workdir_trains_in_runs_config_and_a_second_writer_exits_2(tmp_path):
    flags = [
        f"--config={ROOT / 'configs/ecommerce.py'}:smoke",
        *SMALL_RUN_FLAGS[1:],
        "--config.train.num_steps=20",
    ]
    env = subprocess_env()
    cmd = [sys.executable, str(ROOT / "run.py"), *flags]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    workdir = tmp_path / "runs" / "ecommerce_smoke"
    assert "workdir runs/ecommerce_smoke" in first.stderr
    assert (workdir / "results.json").exists()
    mtime = (workdir / "results.json").stat().st_mtime_ns
    proc = _holder(workdir)
    try:
        second = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        proc.kill()
        proc.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("error: workdir runs/ecommerce_smoke")
    assert "Traceback" not in second.stderr
    assert (workdir / "results.json").stat().st_mtime_ns == mtime
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step 20" in rerun.stderr
