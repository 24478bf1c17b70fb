"""Trains and evaluates a configured multi-task recommender.

  python run.py --config=configs/ecommerce.py                 # workdir runs/ecommerce
  python run.py --config=configs/ecommerce.py:smoke --workdir=runs/try

Running the same command again resumes from the workdir's latest checkpoint (without
--workdir: runs/<config name>[_<variant>]). Bad input (a config value, a data file, a workdir
another run owns) ends with one line naming the problem and exit status 2. To size a mesh
before training (compile only, print XLA's per-device memory estimate):

  python run.py --config=configs/ecommerce.py --compile_only --mesh=8
  python run.py --config=configs/ecommerce.py --compile_only --mesh=4x2  # tables over 2
"""

from __future__ import annotations

import json
import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mtl_jax import compilation_cache, configlib, parallel
from mtl_jax.aot import compile_train_step
from mtl_jax.errors import UserError
from mtl_jax.train import train_and_evaluate
from mtl_jax.workdir import default_workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ecommerce.py")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, metrics and results (default: runs/<config name>[_<variant>]).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join a multi-process run whose coordinator, process count and index JAX detects from "
    "the environment (Cloud TPU VM slices, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS).",
)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Lower and compile the train step, print its memory estimate, exit."
)
_MESH = flags.DEFINE_string(
    "mesh",
    None,
    "With --compile_only: the mesh, N devices (data parallel) or DATAxMODEL, e.g. 4x2 "
    "(default: all devices, model axis from config.mesh.model).",
)
_XLA_CACHE = flags.DEFINE_string("compilation_cache", "default", compilation_cache.FLAG_HELP)
_TENSORBOARD = flags.DEFINE_bool(
    "tensorboard",
    True,
    "Write TensorBoard event files into <workdir>/tensorboard (config.train.tensorboard); "
    "view with: tensorboard --logdir=<workdir or its parent>",
)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.get_absl_handler().setFormatter(
        logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    )
    # Our progress at INFO; library chatter (Orbax logs every save) only from WARNING up.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("mtl_jax").setLevel(logging.INFO)
    _initialize_distributed()
    if _COMPILE_ONLY.value:
        if _MESH.value:
            try:
                num_devices, model = parallel.parse_mesh_shape(_MESH.value)
            except ValueError as e:
                raise app.UsageError(f"--mesh: {e}") from e
            report = compile_train_step(_CONFIG.value, num_devices, model)
        else:
            report = compile_train_step(_CONFIG.value)
        print(json.dumps(report, indent=1))
        return
    workdir = _WORKDIR.value
    if not workdir:
        workdir = str(default_workdir(_config_spec(sys.argv)))
        logging.getLogger("mtl_jax").info(
            "workdir %s (the default for this config; --workdir=DIR to choose)", workdir
        )
    compilation_cache.enable_from_flag(_XLA_CACHE.value)  # not for --compile_only's timing
    config = _CONFIG.value
    if not _TENSORBOARD.value:
        with config.unlocked():
            config.train.tensorboard = False
    train_and_evaluate(config, workdir)


def _initialize_distributed() -> None:
    """``jax.distributed.initialize`` when this is one process of several; then only
    process 0 logs progress (every process still computes, reads its data shard and takes
    part in checkpoint saves)."""
    if _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _MULTIHOST.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # auto-detected from the cluster environment
    else:
        return
    if jax.process_index() != 0:
        logging.getLogger("mtl_jax").setLevel(logging.WARNING)


def _config_spec(argv: list[str]) -> str | None:
    """The ``--config`` value (``--config=X`` or ``--config X``)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_overrides(argv: list[str]) -> None:
    """Rejects a config file that does not load and misspelt ``--config.*`` keys before
    absl's parser would, with a clearer message."""
    spec = _config_spec(argv)
    if spec is None:
        return
    configlib.check_override_keys(configlib.load_config_file(spec), argv)


def _main(argv: list[str]) -> None:
    """``main`` with every ``UserError`` (a bad config value or data file, a busy workdir, a
    diverged run) printed as its message alone, and its exit status (2: bad input)."""
    try:
        main(argv)
    except UserError as e:
        logging.getLogger("mtl_jax").debug("user error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_status)


if __name__ == "__main__":
    try:
        _check_overrides(sys.argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    app.run(_main)
