"""The MMoE paper's synthetic benchmark (Ma et al., KDD 2018, §3): two regression tasks whose
relatedness is the cosine ``data.correlation`` of their weight vectors; 100-dimensional
Gaussian inputs (a dense feature, no embeddings). MMoE with 8 experts of 16 units and
towers of 8 units; ``--config.model.trunk=shared_bottom`` or ``omoe`` for the baselines.

Run:
  python run.py --config=configs/mmoe_synthetic.py --workdir=runs/synthetic \\
      --config.data.correlation=0.5
The paper's comparison (3 correlations x 3 trunks x seeds, table and loss-curve plot):
  python experiments/mmoe_synthetic.py
"""

from __future__ import annotations

import ml_collections

from mtl_jax import config_defaults as base

TASKS = ("y1", "y2")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    c = base.base_config(TASKS, ("x",), early_stopping_metric="y1/rmse")
    c.data = ml_collections.ConfigDict(
        dict(
            name="mmoe_synthetic", correlation=0.5, num_train=10_000, num_validation=2_000,
            num_test=2_000, dim=100, scale=1.0, num_sines=10, noise_std=0.1, alpha_std=3.0,
            shape_seed=0,
        )
    )  # fmt: skip
    c.model.update(
        trunk="mmoe", num_experts=8, trunk_hidden=(16,), tower_hidden=(8,), pairwise_dots=False
    )
    c.optim.update(learning_rate=1e-3, warmup_steps=50, weight_decay=0.0)
    c.train.update(
        batch_size=128, eval_batch_size=2000, num_steps=4000, eval_every=200,
        checkpoint_every=1000, log_every=100, patience=100,
    )  # fmt: skip
    if arg == "smoke":
        c.data.update(num_train=1_024, num_validation=256, num_test=256)
        c.train.update(num_steps=60, eval_every=20, checkpoint_every=20, log_every=10)
    c.lock()
    return c
