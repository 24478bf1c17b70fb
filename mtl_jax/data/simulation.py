"""Pieces every scenario simulator shares: calibrated Bernoulli rates, Zipf exposure, latent
affinities built from feature tables, and task scores tied together by one correlation."""

from __future__ import annotations

import math

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_bias(z: np.ndarray, target_rate: float, weights: np.ndarray | None = None) -> float:
    """The offset b with weighted-mean(sigmoid(z + b)) == target_rate, by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.average(sigmoid(z + mid), weights=weights) < target_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def zipf_weights(num_items: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Exposure probabilities: a random popularity order with weight 1 / rank^exponent."""
    rank = rng.permutation(num_items)
    weight = 1.0 / np.power(rank + 1.0, exponent)
    return weight / weight.sum()


def latent(tables: list[tuple[np.ndarray, float, int]], k: int, rng: np.random.Generator):
    """Sum over ``(ids, scale, vocab)`` of ``scale * table[ids]`` with a fresh N(0, 1/k)
    table per feature: a latent vector for every row, structured by its features."""
    s = 1.0 / math.sqrt(k)
    return sum(scale * rng.normal(0, s, (vocab, k))[ids] for ids, scale, vocab in tables)


def correlated_scores(
    own_scores: dict[str, np.ndarray], anchor: str, rho: float
) -> dict[str, np.ndarray]:
    """``z_t = rho z_anchor + sqrt(1 - rho^2) own_t`` for every task but the anchor: the one
    knob (``task_correlation``) that sets how related the scenario's tasks are."""
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"task_correlation must lie in [-1, 1], got {rho}")
    own = math.sqrt(max(0.0, 1.0 - rho * rho))
    base = own_scores[anchor]
    return {t: base if t == anchor else rho * base + own * z for t, z in own_scores.items()}


Table = tuple[np.ndarray, float, int]  # (ids per row, scale, vocabulary size)


def task_latents(
    tasks: tuple[str, ...], user_tables: list[Table], item_tables: list[Table], k: int, rng
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, user and item latent vectors from the given feature tables (see ``latent``)."""
    return {t: (latent(user_tables, k, rng), latent(item_tables, k, rng)) for t in tasks}


def sample_impressions(num_users: int, exposure: np.ndarray, n: int, rng):
    """``(user, item)`` ids of ``n`` impressions: uniform users, items by ``exposure``."""
    user = rng.integers(num_users, size=n)
    item = rng.choice(len(exposure), size=n, p=exposure)
    return user, item


def affinity_scores(latents: dict, user: np.ndarray, item: np.ndarray) -> dict[str, np.ndarray]:
    """Each task's standardised bilinear user-item affinity for every impression."""
    return {
        t: standardize(np.einsum("nk,nk->n", u[user], v[item])) for t, (u, v) in latents.items()
    }


def history_topic(
    user: np.ndarray, topic: np.ndarray, click: np.ndarray, num_topics: int
) -> np.ndarray:
    """For every impression (in log order), the topic the same user clicked most often
    before it (ties: the one clicked most recently); ``num_topics`` before any click."""
    n = len(user)
    order = np.lexsort((np.arange(n), user))  # by user, then time
    u, t, c = user[order], topic[order], click[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    group_start = starts[np.searchsorted(starts, np.arange(n), side="right") - 1]
    clicked = (t[:, None] == np.arange(num_topics)) & c[:, None]  # (n, topics)
    total = np.cumsum(clicked, axis=0)
    offset = np.where(group_start > 0, group_start - 1, 0)
    counts = total - np.where((group_start > 0)[:, None], total[offset], 0) - clicked
    latest = np.maximum.accumulate(np.where(clicked, np.arange(n)[:, None], -1), axis=0)
    before = np.vstack([np.full((1, num_topics), -1), latest[:-1]])  # strictly before
    recency = np.where(before >= group_start[:, None], before - group_start[:, None] + 1, 0)
    score = counts * (n + 1) + recency  # count first, then the latest click
    history = np.where(counts.any(axis=1), score.argmax(axis=1), num_topics)
    out = np.empty(n, np.int64)
    out[order] = history
    return out
