"""Adult (configs/adult.py): single-task, Shared-Bottom, MMoE and PLE with equal weights,
uncertainty weighting and PCGrad, as experiments/results/adult.md reports."""

from mtl_jax.sweeps import grid

TRUNKS = ("shared_bottom", "mmoe", "ple")
METHODS = ("ew", "uw", "pcgrad")


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    yield from grid({"model.trunk": TRUNKS, "balancing.method": METHODS})
