"""Multi-task recommender on the built-in e-commerce simulator.

Tasks: click (binary), purchase (binary, only after a click), rating (regression, only for
purchases) and item category (multiclass, withheld from the inputs). MMoE trunk.

Run:
  python run.py --config=configs/ecommerce.py --workdir=runs/ecommerce
Seconds-long smoke run:
  python run.py --config=configs/ecommerce.py:smoke --workdir=runs/ecommerce_smoke
Override any key from the command line, e.g.:
  python run.py --config=configs/ecommerce.py --workdir=runs/sb --config.model.trunk=shared_bottom
"""

from __future__ import annotations

import ml_collections

from mtl_jax.balancing import config as balancing_config

TASKS = ("click", "purchase", "rating", "category")
INPUT_FEATURES = ("user_id", "age", "gender", "region", "item_id", "brand", "price")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        dict(
            name="ecommerce",
            num_users=5000,
            num_items=2000,
            num_impressions=200_000,
            num_categories=20,
            num_brands=100,
            num_age_buckets=7,
            num_regions=10,
            num_price_buckets=5,
            latent_dim=8,
            task_correlation=0.5,
            zipf_exponent=1.0,
            click_rate=0.07,
            purchase_given_click=0.15,
            signal_scale=2.0,
            user_id_noise=0.2,
            item_id_noise=0.5,
            rating_noise=0.6,
            val_fraction=0.1,
            test_fraction=0.1,
        )
    )
    c.tasks = TASKS
    c.input_features = INPUT_FEATURES
    c.model = ml_collections.ConfigDict(
        dict(
            trunk="mmoe",
            embed_dim=16,
            pairwise_dots=True,
            num_experts=4,
            trunk_hidden=(64, 32),
            tower_hidden=(32,),
            dropout=0.0,
        )
    )
    # Any method in mtl_jax.balancing.names(), with its kwargs, e.g.
    # --config.balancing.method=cagrad --config.balancing.c=0.4
    c.balancing = balancing_config.default_config(TASKS, method="ew")
    c.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=3e-3,
            embedding_optimizer="adagrad",
            embedding_learning_rate=0.2,
            embedding_l2=0.0,
            warmup_steps=100,
            weight_decay=1e-4,
            b1=0.9,
            b2=0.999,
            grad_clip_norm=1.0,
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=1024,
            eval_batch_size=4096,
            num_steps=3000,
            eval_every=250,
            checkpoint_every=500,
            log_every=50,
            early_stopping_metric="click/auc",
            patience=4,
        )
    )
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, async_save=True))
    c.mesh = ml_collections.ConfigDict(dict(num_devices=0))  # 0: all devices

    if arg == "smoke":
        c.data.update(num_users=400, num_items=200, num_impressions=16_000, num_brands=20)
        c.model.update(embed_dim=8, trunk_hidden=(32,), tower_hidden=(16,))
        c.train.update(
            batch_size=256,
            eval_batch_size=1024,
            num_steps=60,
            eval_every=20,
            checkpoint_every=20,
            log_every=10,
        )
        c.optim.warmup_steps = 10
    c.lock()
    return c
