"""Small configs and datasets shared by tests."""

from __future__ import annotations

import os

import ml_collections

from configs import ecommerce


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
    """The smoke config shrunk further: a few thousand impressions, batches of 64."""
    config = ecommerce.get_config("smoke")
    config.data.update(num_users=120, num_items=80, num_impressions=4000, num_brands=10)
    config.train.update(
        batch_size=64,
        eval_batch_size=256,
        num_steps=20,
        eval_every=10,
        checkpoint_every=10,
        log_every=5,
    )
    config.optim.warmup_steps = 4
    config.train.update(**train_overrides)
    return config


# The smoke e-commerce run shrunk further, as command-line flags (for run.py subprocesses).
SMALL_RUN_FLAGS = [
    "--config=configs/ecommerce.py:smoke",
    "--config.data.num_impressions=6000",
    "--config.data.num_users=150",
    "--config.data.num_items=80",
    "--config.train.batch_size=64",
]


QUICK_COMPILE = "--xla_backend_optimization_level=0"  # as conftest sets for this process


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """The environment of a script a test starts: JAX on the CPU with ``devices`` devices
    (one by default: compiling for conftest's 8 would slow a run, and multi-device
    equivalence has its own tests), compiled as quickly as the tests' own programs."""
    flags = QUICK_COMPILE
    if devices > 1:
        flags = f"--xla_force_host_platform_device_count={devices} {flags}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
