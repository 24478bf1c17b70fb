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

from mtl_jax import config_defaults as base

TASKS = ("click", "purchase", "rating", "category")
INPUT_FEATURES = ("user_id", "age", "gender", "region", "item_id", "brand", "price")


VARIANTS = ("", "smoke", "staged", "esmm", "naive_cvr", "cold", "cold_text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds,
    ``"staged"`` for pre-training then fine-tuning the towers on frozen shared groups;
    ``"esmm"`` and ``"naive_cvr"``, the two sides of ESMM's claim (experiments/esmm.py):
    click plus purchase with ESMM's pCTCVR = pCTR x pCVR over every impression, against
    click plus a conversion task trained on clicked impressions only; ``"cold"``: 10% of
    the items (drawn with the seed) only in test, as many only in validation, metrics on
    cold and warm items (the category of an unseen item is a real question there), unseen
    ids at zero with id dropout as in configs/movielens.py:cold; ``"cold_text"``: the same
    with the item titles' pretrained text features."""
    if (arg or "") not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid: {VARIANTS}")
    tasks = {"esmm": ("click", "purchase"), "naive_cvr": ("click", "cvr")}.get(arg or "", TASKS)
    c = base.base_config(tasks, INPUT_FEATURES, early_stopping_metric="click/auc")
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
            cold_item_fraction=0.0,
        )
    )
    if arg == "staged":
        # Pre-train embeddings, trunk and towers on every task, then fine-tune the towers
        # with the shared groups frozen (mtl_jax/stages.py).
        c.stages.s1_pretrain = dict(steps=2000, tasks=(), frozen=(), shared_lr_scale=1.0)
        c.stages.s2_finetune = dict(
            steps=1000, tasks=(), frozen=("embeddings", "trunk"), shared_lr_scale=1.0
        )
    if arg in ("cold", "cold_text"):
        c.data.cold_item_fraction = 0.1
        c.model.update(zero_unseen_ids=True, id_dropout=0.25)
    if arg == "cold_text":
        c.text.features = ("item_id",)
    if arg == "esmm":
        c.model.update(esmm_ctr_task="click", esmm_ctcvr_task="purchase")
    # A step of this model takes ~5 ms on 2 CPU cores, so the host's work between calls
    # shows: 8 steps per call of the jitted step train ~20% more examples/s (README). The
    # seconds-long smoke run keeps one per call (one program to compile).
    c.train.steps_per_dispatch = 8
    if arg == "smoke":
        c.data.update(num_users=400, num_items=200, num_impressions=16_000, num_brands=20)
        base.shrink_for_smoke(c)
        c.train.steps_per_dispatch = 1
    c.lock()
    return c
