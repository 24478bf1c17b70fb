"""The command line: bad overrides fail early; SIGKILL mid-run, rerun, same results."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import SMALL_RUN_FLAGS, subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = [
    *SMALL_RUN_FLAGS,
    "--config.train.eval_batch_size=512",
    "--config.train.num_steps=150",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=10",
    "--config.train.patience=100",
]


def _run(workdir, *extra, wait=True, stderr_to=None):
    cmd = [sys.executable, "run.py", *SMALL, f"--workdir={workdir}", *extra]
    env = subprocess_env()
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr_to)


@pytest.mark.slow
def test_misspelt_override_names_the_key(tmp_path):
    result = _run(tmp_path, "--config.model.num_expert=8")
    assert result.returncode != 0
    assert "num_expert" in result.stderr and "num_experts" in result.stderr
    assert not (tmp_path / "checkpoints").exists(), "nothing is written for a bad config"


@pytest.fixture(scope="module")
def straight_results(tmp_path_factory):
    """The uninterrupted run the interrupted ones must match."""
    workdir = tmp_path_factory.mktemp("straight")
    straight = _run(workdir)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def _interrupt_after_checkpoint(workdir, sig, min_step=40):
    """Starts a run, sends ``sig`` once a checkpoint at ``min_step`` or later exists."""
    # stderr to a file, not a pipe: a full pipe would block the run before it is interrupted.
    log_path = pathlib.Path(str(workdir) + ".log")
    with log_path.open("w") as log:
        proc = _run(workdir, wait=False, stderr_to=log)
        ckpt_dir = workdir / "checkpoints"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            steps = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
            if any(int(p.name) >= min_step for p in steps):
                break
            time.sleep(0.05)
        assert proc.poll() is None, (
            "the run ended before it could be interrupted: " + log_path.read_text()[-2000:]
        )
        proc.send_signal(sig)
        proc.wait(timeout=120)
    return proc, log_path.read_text()


def _rerun_and_compare(workdir, straight):
    rerun = _run(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["test"] == straight["test"]
    assert results["best_step"] == straight["best_step"]


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, straight_results):
    _interrupt_after_checkpoint(tmp_path, signal.SIGKILL)
    assert not (tmp_path / "results.json").exists()
    _rerun_and_compare(tmp_path, straight_results)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_resumes_exactly(tmp_path, straight_results):
    """SIGTERM (preemption notice): a checkpoint at the next step boundary, exit code 0, and
    a rerun that ends exactly where the uninterrupted run does."""
    proc, stderr = _interrupt_after_checkpoint(tmp_path, signal.SIGTERM)
    assert proc.returncode == 0, stderr[-3000:]
    assert "preempted: checkpointed and stopping" in stderr
    assert not (tmp_path / "results.json").exists()
    _rerun_and_compare(tmp_path, straight_results)
