"""Multi-host training on one machine: two JAX processes joined by ``jax.distributed``
(gloo CPU collectives), each reading its own half of every batch, equal one process that
reads the whole batch."""

import json
import pathlib
import socket
import subprocess
import sys

import chex
import jax
import pytest

from mtl_jax import configlib, parallel
from mtl_jax.checkpoint import Checkpointer
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer
from tests.helpers import SMALL_RUN_FLAGS, subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = [
    *SMALL_RUN_FLAGS,
    "--config.train.num_steps=30",
    "--config.train.eval_every=10",
    "--config.train.checkpoint_every=30",
    "--config.balancing.method=pcgrad",
    "--config.mesh.model=2",  # a (2 data, 2 model) mesh: tables split by rows, too
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(workdir, *extra):
    return [sys.executable, "run.py", *CONFIG, f"--workdir={workdir}", *extra]


def _env(devices_per_process: int) -> dict[str, str]:
    return subprocess_env(devices_per_process)


def _final_params(workdir):
    config = configlib.load_config_file("configs/ecommerce.py:smoke")
    overrides = dict(a[len("--config.") :].split("=", 1) for a in CONFIG[1:])
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = type(config[section][name])(value)
    trainer = Trainer(config, load_dataset(config.data, config.seed), mesh=parallel.make_mesh(1))
    ckpt = Checkpointer(workdir)
    try:
        state = ckpt.restore_state(ckpt.latest_step(), trainer.abstract_state)
    finally:
        ckpt.close()
    return ckpt.latest_step(), jax.device_get(state.params)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """2 processes x 2 devices (each loads half of each global batch of 64, assembled with
    ``make_array_from_process_local_data``; PCGrad; embedding tables split over the model
    axis) end with the parameters and test metrics of one process x 4 devices; process 0
    alone logs progress."""
    two, one = tmp_path / "two", tmp_path / "one"
    address = f"localhost:{_free_port()}"
    logs = [(tmp_path / f"process_{i}.log").open("w") for i in range(2)]
    procs = [
        subprocess.Popen(
            _command(
                two,
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=_env(2),
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    single = subprocess.run(
        _command(one), cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300
    )
    codes = [p.wait(timeout=300) for p in procs]
    for log in logs:
        log.close()
    texts = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert single.returncode == 0, single.stderr[-3000:]

    results_two = json.loads((two / "results.json").read_text())
    results_one = json.loads((one / "results.json").read_text())
    assert results_two["num_devices"] == results_one["num_devices"] == 4
    assert "test metrics" in texts[0] and "test metrics" not in texts[1]  # only process 0 logs
    for task, metrics in results_one["test"].items():
        for name, value in metrics.items():
            assert results_two["test"][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6)

    step_two, params_two = _final_params(two)
    step_one, params_one = _final_params(one)
    assert step_two == step_one == 30
    chex.assert_trees_all_close(params_two, params_one, rtol=1e-5, atol=1e-6)
