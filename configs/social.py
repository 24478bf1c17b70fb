"""Social feed: like, comment, share and follow-author (four binary tasks on the same
impressions, share at 0.3%), plus the viewer's interest topic (multiclass, withheld from
the inputs). MMoE trunk; early stopping on validation like AUC.

Run:
  python run.py --config=configs/social.py --workdir=runs/social
Rare labels: --config.task_loss.share.pos_weight=10 re-weights the share task's positives.
"""

from __future__ import annotations

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data.social import simulate_social

TASKS = ("like", "comment", "share", "follow", "topic")
INPUT_FEATURES = ("user_id", "age", "region", "item_id", "author", "item_topic", "media")


VARIANTS = ("", "smoke", "cold")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds,
    ``"cold"`` for new viewers: 10% of them (drawn with the seed) only in test, as many only
    in validation, metrics on cold and warm viewers (``test_subsets``); the model reads the
    viewer's history (``history_topic``), unseen ids start at zero and ``user_id`` is
    dropped out in training, so that the topic of a new viewer is predicted from what
    they did, not looked up by id."""
    if (arg or "") not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid: {VARIANTS}")
    features = (*INPUT_FEATURES, "history_topic") if arg == "cold" else INPUT_FEATURES
    c = base.base_config(TASKS, features, early_stopping_metric="like/auc")
    c.data = base.data_section("social", simulate_social)
    if arg == "cold":
        c.data.cold_user_fraction = 0.1
        c.model.update(zero_unseen_ids=True, id_dropout=0.25, id_dropout_features=("user_id",))
    if arg == "smoke":
        c.data.update(num_users=400, num_authors=50, num_items=300, num_impressions=16_000)
        base.shrink_for_smoke(c)
    c.lock()
    return c
