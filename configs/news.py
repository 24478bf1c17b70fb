"""News feed: click (binary; strong position and popularity bias), dwell time (regression,
log seconds, only for clicks) and the reader's favourite topic (multiclass, withheld from
the inputs). MMoE trunk; early stopping on validation click AUC.

Run:
  python run.py --config=configs/news.py --workdir=runs/news
"""

from __future__ import annotations

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data.news import simulate_news

TASKS = ("click", "dwell", "topic")
INPUT_FEATURES = ("user_id", "age", "region", "item_id", "item_topic", "source", "freshness",
                  "position")  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    c = base.base_config(TASKS, INPUT_FEATURES, early_stopping_metric="click/auc")
    c.data = base.data_section("news", simulate_news)
    if arg == "smoke":
        c.data.update(num_users=400, num_items=300, num_impressions=16_000, num_sources=10)
        base.shrink_for_smoke(c)
    c.lock()
    return c
