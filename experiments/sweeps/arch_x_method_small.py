"""A smaller architecture x balancing grid for the larger simulated datasets: three shared
trunks crossed with two loss-weighting and three gradient methods, plus the single-task
reference (see arch_x_method.py for the full grid)."""

TRUNKS = ("shared_bottom", "mmoe", "ple")
METHODS = ("ew", "uw", "famo", "pcgrad", "cagrad", "nash_mtl")


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    for trunk in TRUNKS:
        for method in METHODS:
            yield {"model.trunk": trunk, "balancing.method": method}
