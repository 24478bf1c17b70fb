"""A deterministic social-feed simulator: like, comment, share and follow-author on each
impression (several can happen at once; share well under 1%), plus the viewer's interest
topic.

Generative story (all drawn from one seed):
  * viewers have an age bucket, a region and an interest topic; posts an author (with an
    author-level audience size that drives a Zipf-like exposure), a topic and a media type;
  * each interaction ``t`` scores a (viewer, post) pair with its own latent affinity,
    ``z_t = rho z_like + sqrt(1 - rho^2) z_t_own`` (``task_correlation = rho``), plus a
    same-topic bonus and the post's quality; ``P(t) = sigmoid(signal * z_t + ... + b_t)``
    with ``b_t`` calibrated to the task's base rate (like 5%, comment 1%, share 0.3%,
    follow 0.5%), each drawn independently given the probabilities;
  * the viewer's interest topic is an attribute-prediction task (multiclass), withheld from
    the inputs; ``history_topic`` is the topic the viewer liked most before the impression
    (log order is time order; ``num_topics`` before any like), for configs that read it.
The oracle holds every interaction's true probability.

New viewers: with ``cold_user_fraction`` > 0 that fraction of the viewers (and as many for
validation) is held out of training (``schema.hold_out_items`` with ``kind="users"``);
``test_subsets`` name the rows of ``cold_users`` and ``warm_users``: there the topic is a
real question, where a seen viewer's topic is a lookup of the id.
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

INTERACTIONS = ("like", "comment", "share", "follow")
_TOPICS = ("pets", "fitness", "cooking", "memes", "travel", "art", "diy", "parenting",
           "gardening", "cars", "books", "photography")  # fmt: skip
_MEDIA = ("photo", "video", "text", "link")


def simulate_social(
    *,
    num_users: int = 5000,
    num_authors: int = 500,
    num_items: int = 4000,
    num_impressions: int = 200_000,
    num_topics: int = 10,
    num_age_buckets: int = 6,
    num_regions: int = 8,
    latent_dim: int = 8,
    task_correlation: float = 0.5,
    zipf_exponent: float = 1.0,
    like_rate: float = 0.05,
    comment_rate: float = 0.01,
    share_rate: float = 0.003,
    follow_rate: float = 0.005,
    topic_affinity: float = 1.0,
    signal_scale: float = 2.0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    cold_user_fraction: float = 0.0,
    seed: int = 0,
) -> MultiTaskDataset:
    """Simulated social-feed impressions with four interaction labels and a topic label."""
    if num_topics > len(_TOPICS):
        raise ValueError(f"num_topics must be <= {len(_TOPICS)}, got {num_topics}")
    rates = dict(like=like_rate, comment=comment_rate, share=share_rate, follow=follow_rate)
    for name, rate in rates.items():
        if not 0.0 < rate < 1.0:
            raise ValueError(f"{name}_rate must lie in (0, 1), got {rate}")
    rng = np.random.default_rng(seed)
    k = latent_dim
    user_age = rng.integers(num_age_buckets, size=num_users)
    user_region = rng.integers(num_regions, size=num_users)
    user_topic = rng.integers(num_topics, size=num_users)
    item_author = rng.integers(num_authors, size=num_items)
    author_topic = rng.integers(num_topics, size=num_authors)
    item_topic = np.where(rng.random(num_items) < 0.7, author_topic[item_author],
                          rng.integers(num_topics, size=num_items))  # fmt: skip
    item_media = rng.integers(len(_MEDIA), size=num_items)
    # Exposure follows the author's audience (Zipf over authors), shared by their posts.
    author_weight = zipf_weights(num_authors, zipf_exponent, rng)
    exposure = (
        author_weight[item_author] / np.bincount(item_author, minlength=num_authors)[item_author]
    )
    exposure = exposure / exposure.sum()
    item_text = tuple(
        f"{_MEDIA[item_media[i]]} about {_TOPICS[item_topic[i]]} by creator {item_author[i]}"
        for i in range(num_items)
    )

    user_tables = [
        (user_age, 1.0, num_age_buckets),
        (user_region, 0.5, num_regions),
        (user_topic, 1.0, num_topics),
        (np.arange(num_users), 0.3, num_users),
    ]
    item_tables = [
        (item_topic, 1.0, num_topics),
        (item_author, 0.7, num_authors),
        (item_media, 0.5, len(_MEDIA)),
        (np.arange(num_items), 0.4, num_items),
    ]
    latents = task_latents(INTERACTIONS, user_tables, item_tables, k, rng)
    user, item = sample_impressions(num_users, exposure, num_impressions, rng)
    own = affinity_scores(latents, user, item)
    z = correlated_scores(own, "like", task_correlation)
    same_topic = (user_topic[user] == item_topic[item]).astype(np.float64)
    quality = rng.normal(0, 0.5, num_items)[item]
    probs = {}
    for t in INTERACTIONS:
        logit = signal_scale * z[t] + topic_affinity * same_topic + quality
        probs[t] = sigmoid(logit + calibrate_bias(logit, rates[t]))
    labels = {t: (rng.random(num_impressions) < probs[t]).astype(np.float32) for t in probs}

    features = {
        "user_id": user, "age": user_age[user], "region": user_region[user],
        "item_id": item, "author": item_author[item], "item_topic": item_topic[item],
        "media": item_media[item],
        "history_topic": history_topic(user, item_topic[item], labels["like"] > 0, num_topics),
    }  # fmt: skip
    features = {n: c.astype(np.int32) for n, c in features.items()}
    ones = np.ones(num_impressions, np.float32)
    everything = Split(
        features,
        labels={**labels, "topic": user_topic[user].astype(np.int32)},
        masks={t: ones for t in (*INTERACTIONS, "topic")},
        oracle={t: p.astype(np.float32) for t, p in probs.items()},
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
        FeatureSpec("author", num_authors), FeatureSpec("item_topic", num_topics),
        FeatureSpec("media", len(_MEDIA)), FeatureSpec("history_topic", num_topics + 1),
    )  # fmt: skip
    tasks = (
        *(TaskSpec(t, "binary") for t in INTERACTIONS),
        TaskSpec("topic", "multiclass", num_classes=num_topics),
    )
    return MultiTaskDataset(
        name="social", features=specs, tasks=tasks, train=everything.take(train),
        validation=everything.take(val), test=everything.take(test), item_text=item_text,
        test_subsets=subsets, validation_subsets=val_subsets,
    )  # fmt: skip
