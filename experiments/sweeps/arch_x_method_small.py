"""A smaller architecture x balancing grid for the larger simulated datasets: three shared
trunks crossed with three loss-weighting and three gradient methods, plus the single-task
reference (see arch_x_method.py for the full grid)."""

from mtl_jax.sweeps import grid

TRUNKS = ("shared_bottom", "mmoe", "ple")
METHODS = ("ew", "uw", "famo", "pcgrad", "cagrad", "nash_mtl")


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    yield from grid({"model.trunk": TRUNKS, "balancing.method": METHODS})
