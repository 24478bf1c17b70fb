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


VARIANTS = ("", "smoke", "cold")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds,
    ``"cold"`` for new readers: 10% of them (drawn with the seed) only in test, as many only
    in validation, metrics on cold and warm readers (``test_subsets``); the model reads the
    reader's history (``history_topic``), unseen ids start at zero and ``user_id`` is
    dropped out in training, so that the topic of a new reader is predicted from what
    they did, not looked up by id. There ``data.topic_affinity`` is 3.0: at the default 1.5
    a click barely depends on the topic (the clicked article matches the reader's topic 11%
    of the time against 8% for any impression), so a new reader's topic would be all but
    unknowable from a few clicks (3.0: 18%)."""
    if (arg or "") not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid: {VARIANTS}")
    features = (*INPUT_FEATURES, "history_topic") if arg == "cold" else INPUT_FEATURES
    c = base.base_config(TASKS, features, early_stopping_metric="click/auc")
    c.data = base.data_section("news", simulate_news)
    if arg == "cold":
        c.data.update(cold_user_fraction=0.1, topic_affinity=3.0)
        c.model.update(zero_unseen_ids=True, id_dropout=0.25, id_dropout_features=("user_id",))
    if arg == "smoke":
        c.data.update(num_users=400, num_items=300, num_impressions=16_000, num_sources=10)
        base.shrink_for_smoke(c)
    c.lock()
    return c
