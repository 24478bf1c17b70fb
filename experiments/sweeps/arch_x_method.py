"""Architecture x balancing method: four shared trunks crossed with ten balancing methods,
plus the single-task reference that delta-m% is measured against.

``single_task`` gives every task its own trunk column (only the input embeddings are
shared), so it is run with equal weights only: with nothing shared in the trunk, the
gradient methods have no conflict to resolve there.
"""

from mtl_jax.sweeps import grid

TRUNKS = ("shared_bottom", "mmoe", "ple", "cross_stitch")
METHODS = ("ew", "uw", "dwa", "gradnorm", "pcgrad", "cagrad", "mgda", "nash_mtl", "upgrad", "famo")


def common(config):
    # The catalogue ranking (MovieLens) is its own question and costs seconds per run.
    return {"ranking.enabled": False} if "ranking" in config else {}


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    yield from grid({"model.trunk": TRUNKS, "balancing.method": METHODS})
