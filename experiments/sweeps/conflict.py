"""Where balancing should matter: the e-commerce MMoE with tasks that pull apart
(``data.task_correlation=-0.5``: the purchase and rating latents lean against the click
latent), equal weights against the gradient methods the literature proposes for conflict,
plus the single-task reference.

  python experiments/ablate.py --config=configs/ecommerce.py --sweep=conflict --seeds=10 \\
      --config.data_seed=0 --workdir=runs/ablate/conflict \\
      --metrics=click/auc,purchase/auc,rating/rmse --paired=mmoe-ew

``data_seed`` pins the simulated data so that the seeds (initialisation and data order)
train in one vmapped step and pair across cells; the category task is left out of delta-m%
(every test item is seen in training, so its id gives the category away).
"""

from mtl_jax.sweeps import grid

METHODS = ("ew", "pcgrad", "cagrad", "nash_mtl", "upgrad", "famo")


def common(config):
    del config
    return {"data.task_correlation": -0.5}


def sweep(config):
    del config
    yield {"name": "single_task", "model.trunk": "single_task", "balancing.method": "ew"}
    yield from grid({"model.trunk": ("mmoe",), "balancing.method": METHODS})
