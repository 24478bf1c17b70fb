"""A deterministic news-feed simulator: click, dwell time and the reader's topic interest,
with strong position and popularity bias.

Generative story (all drawn from one seed):
  * readers have an age bucket, a region and a favourite topic; articles a topic, a source
    and a freshness bucket, and a Zipf popularity that decides how often they are shown;
  * every impression sits at a slate position; a reader examines position ``p`` with
    probability ``1 / (1 + p)^position_decay`` and clicks an examined article with
    ``sigmoid(signal * z_click + popularity_boost * log-popularity + bias)``, so clicks mix
    relevance with position and popularity, as logged feeds do (position is an input, so a
    model can learn the bias and be served at position 0);
  * dwell time (log seconds) exists only for clicks: ``3.5 + z_dwell + noise`` with
    ``z_dwell = rho z_click + sqrt(1 - rho^2) z_own`` (``task_correlation = rho``);
  * the reader's favourite topic is an attribute-prediction task (multiclass), withheld from
    the inputs; readers click articles of their topic more, which is what makes it learnable;
  * ``history_topic`` is the reader's history as a serving system knows it: the topic the
    reader clicked most before this impression (log order is time order; ties go to the
    latest click), ``num_topics`` before any click. Configs choose whether the model reads it.
The oracle holds P(click) and E[dwell | click].

New readers: with ``cold_user_fraction`` > 0 that fraction of the readers (and as many for
validation) is held out of training (``schema.hold_out_items`` with ``kind="users"``);
``test_subsets`` name the rows of ``cold_users`` and ``warm_users``. A new reader's topic
is a real question (their id is unseen: only their click history can tell it), where a
seen reader's topic is a lookup of the id.
"""

from __future__ import annotations

import numpy as np

from mtl_jax.data.schema import (
    FeatureSpec,
    MultiTaskDataset,
    Split,
    hold_out_items,
    random_split,
)
from mtl_jax.data.simulation import (
    affinity_scores,
    calibrate_bias,
    correlated_scores,
    history_topic,
    sample_impressions,
    sigmoid,
    task_latents,
    zipf_weights,
)
from mtl_jax.tasks import TaskSpec

TOPICS = (
    "politics", "sports", "technology", "science", "health", "business", "culture", "travel",
    "food", "climate", "education", "music", "film", "gaming", "space", "fashion",
)  # fmt: skip
_SOURCES = ("Daily", "Herald", "Times", "Post", "Wire", "Journal", "Gazette", "Review")
_VERBS = ("shapes", "rethinks", "faces", "unveils", "questions", "celebrates", "tests")


def simulate_news(
    *,
    num_users: int = 5000,
    num_items: int = 3000,
    num_impressions: int = 200_000,
    num_topics: int = 12,
    num_sources: int = 40,
    num_age_buckets: int = 6,
    num_regions: int = 8,
    num_freshness: int = 4,
    num_positions: int = 10,
    latent_dim: int = 8,
    task_correlation: float = 0.5,
    zipf_exponent: float = 1.1,
    click_rate: float = 0.08,
    position_decay: float = 1.0,
    popularity_boost: float = 0.3,
    topic_affinity: float = 1.5,
    signal_scale: float = 2.0,
    dwell_noise: float = 0.5,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    cold_user_fraction: float = 0.0,
    seed: int = 0,
) -> MultiTaskDataset:
    """Simulated news impressions with click, dwell and topic labels (see the module doc)."""
    if num_topics > len(TOPICS):
        raise ValueError(f"num_topics must be <= {len(TOPICS)}, got {num_topics}")
    rng = np.random.default_rng(seed)
    k = latent_dim
    user_age = rng.integers(num_age_buckets, size=num_users)
    user_region = rng.integers(num_regions, size=num_users)
    user_topic = rng.integers(num_topics, size=num_users)
    item_topic = rng.integers(num_topics, size=num_items)
    item_source = rng.integers(num_sources, size=num_items)
    item_fresh = rng.integers(num_freshness, size=num_items)
    exposure = zipf_weights(num_items, zipf_exponent, rng)
    item_text = tuple(
        f"{_SOURCES[item_source[i] % len(_SOURCES)]} {TOPICS[item_topic[i]]}: "
        f"{TOPICS[rng.integers(num_topics)]} {_VERBS[rng.integers(len(_VERBS))]} the season"
        for i in range(num_items)
    )

    user_tables = [
        (user_age, 1.0, num_age_buckets),
        (user_region, 0.7, num_regions),
        (user_topic, 1.0, num_topics),
        (np.arange(num_users), 0.3, num_users),
    ]
    item_tables = [
        (item_topic, 1.0, num_topics),
        (item_source, 0.5, num_sources),
        (item_fresh, 0.5, num_freshness),
        (np.arange(num_items), 0.5, num_items),
    ]
    latents = task_latents(("click", "dwell"), user_tables, item_tables, k, rng)
    user, item = sample_impressions(num_users, exposure, num_impressions, rng)
    position = rng.integers(num_positions, size=num_impressions)
    own = affinity_scores(latents, user, item)
    z = correlated_scores(own, "click", task_correlation)

    same_topic = (user_topic[user] == item_topic[item]).astype(np.float64)
    relevance = signal_scale * z["click"] + topic_affinity * same_topic
    relevance += popularity_boost * np.log(exposure[item] * num_items)
    examine = 1.0 / np.power(1.0 + position, position_decay)
    relevance += calibrate_bias(relevance, click_rate / examine.mean())
    p_click = examine * sigmoid(relevance)
    click = rng.random(num_impressions) < p_click
    dwell_mean = 3.5 + 0.8 * z["dwell"] + 0.3 * same_topic
    dwell = dwell_mean + dwell_noise * rng.normal(size=num_impressions)

    features = {
        "user_id": user, "age": user_age[user], "region": user_region[user],
        "item_id": item, "item_topic": item_topic[item], "source": item_source[item],
        "freshness": item_fresh[item], "position": position,
        "history_topic": history_topic(user, item_topic[item], click, num_topics),
    }  # fmt: skip
    features = {n: c.astype(np.int32) for n, c in features.items()}
    ones = np.ones(num_impressions, np.float32)
    everything = Split(
        features,
        labels={
            "click": click.astype(np.float32),
            "dwell": np.where(click, dwell, 0.0).astype(np.float32),
            "topic": user_topic[user].astype(np.int32),
        },
        masks={"click": ones, "dwell": click.astype(np.float32), "topic": ones},
        oracle={"click": p_click.astype(np.float32), "dwell": dwell_mean.astype(np.float32)},
    )
    train, val, test = random_split(num_impressions, val_fraction, test_fraction, rng)
    subsets, val_subsets = {}, {}
    if cold_user_fraction > 0:
        train, val, test, subsets, val_subsets = hold_out_items(
            user, train, val, test, cold_user_fraction, seed, kind="users"
        )
    specs = (
        FeatureSpec("user_id", num_users), FeatureSpec("age", num_age_buckets),
        FeatureSpec("region", num_regions), FeatureSpec("item_id", num_items),
        FeatureSpec("item_topic", num_topics), FeatureSpec("source", num_sources),
        FeatureSpec("freshness", num_freshness), FeatureSpec("position", num_positions),
        FeatureSpec("history_topic", num_topics + 1),
    )  # fmt: skip
    tasks = (
        TaskSpec("click", "binary"),
        TaskSpec("dwell", "regression"),
        TaskSpec("topic", "multiclass", num_classes=num_topics),
    )
    return MultiTaskDataset(
        name="news", features=specs, tasks=tasks, train=everything.take(train),
        validation=everything.take(val), test=everything.take(test), item_text=item_text,
        test_subsets=subsets, validation_subsets=val_subsets,
    )  # fmt: skip
