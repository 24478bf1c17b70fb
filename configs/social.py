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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full run, ``"smoke"`` for a tiny one that runs in seconds."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    c = base.base_config(TASKS, INPUT_FEATURES, early_stopping_metric="like/auc")
    c.data = base.data_section("social", simulate_social)
    if arg == "smoke":
        c.data.update(num_users=400, num_authors=50, num_items=300, num_impressions=16_000)
        base.shrink_for_smoke(c)
    c.lock()
    return c
