"""The command line: bad overrides fail early; SIGKILL mid-run, rerun, same results."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMALL = [
    "--config=configs/ecommerce.py:smoke",
    "--config.data.num_impressions=6000",
    "--config.data.num_users=150",
    "--config.data.num_items=80",
    "--config.train.batch_size=64",
    "--config.train.eval_batch_size=512",
    "--config.train.num_steps=150",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=10",
    "--config.train.patience=100",
]


def _run(workdir, *extra, wait=True):
    cmd = [sys.executable, "run.py", *SMALL, f"--workdir={workdir}", *extra]
    # One CPU device: compiling for conftest's 8 forced devices would triple the run time, and
    # multi-device equivalence has its own tests.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_misspelt_override_names_the_key(tmp_path):
    result = _run(tmp_path, "--config.model.num_expert=8")
    assert result.returncode != 0
    assert "num_expert" in result.stderr and "num_experts" in result.stderr
    assert not (tmp_path / "checkpoints").exists(), "nothing is written for a bad config"


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path):
    straight = _run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = _run(tmp_path / "killed", wait=False)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
        if any(int(p.name) >= 40 for p in steps):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()

    rerun = _run(tmp_path / "killed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from step" in rerun.stderr
    results = [
        json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "killed")
    ]
    assert results[0]["test"] == results[1]["test"]
    assert results[0]["best_step"] == results[1]["best_step"]
