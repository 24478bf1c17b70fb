"""Every code path of ``experiments/ablate.py`` in seconds (the test suite runs it): the
single-task reference, a loss-weighting and a gradient method on a gated trunk, a handful
of steps."""


def common(config):
    del config
    return {
        "train.num_steps": 12,
        "train.eval_every": 6,
        "train.checkpoint_every": 6,
        "train.log_every": 3,
        "optim.warmup_steps": 2,
    }


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    for method in ("ew", "pcgrad"):
        yield {"model.trunk": "mmoe", "balancing.method": method}
