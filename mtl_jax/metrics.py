"""Evaluation metrics on host numpy arrays, called like scikit-learn: ``f(labels, predictions)``.

Metrics that are exact over a whole split (AUC needs every score at once) run on the host
after the jitted eval step has produced predictions; losses are accumulated on device as
mergeable (sum, count) pairs instead (see ``mtl_jax.tasks``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_EPS = 1e-7


def _as_1d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    return x


def _check_same_length(labels: np.ndarray, predictions: np.ndarray) -> None:
    if labels.shape[0] != predictions.shape[0]:
        raise ValueError(
            f"labels and predictions differ in length: {labels.shape} vs {predictions.shape}"
        )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` where tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U), ties in the scores count one half.

    Returns NaN when only one class is present, since AUC is undefined there.
    """
    labels = _as_1d("labels", labels).astype(bool)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(labels, predictions)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(predictions)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_auc(probabilities: np.ndarray, predictions: np.ndarray) -> float:
    """The AUC of ``predictions`` against labels drawn as Bernoulli(``probabilities``), in
    expectation over the draws (the ratio of the expected correctly ordered positive-negative
    pairs to the expected pairs; ties count one half): how well a model ranks what it
    cannot observe, e.g. the conversion probability of impressions nobody clicked, given a
    simulator's true probabilities."""
    p = _as_1d("probabilities", probabilities).astype(np.float64)
    s = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(p, s)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    q = 1.0 - p
    order = np.argsort(s, kind="stable")
    s_sorted, q_sorted = s[order], q[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    group_q = np.add.reduceat(q_sorted, starts) if len(s) else np.zeros(0)
    below = np.r_[0.0, np.cumsum(group_q)[:-1]]  # the negatives' weight under each group
    group_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    ordered = below[group_of] + 0.5 * (group_q[group_of] - q_sorted)
    numerator = float(np.sum(p[order] * ordered))
    denominator = float(np.sum(p * (q.sum() - q)))
    return numerator / denominator if denominator > 0 else float("nan")


def gauc(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC, as CTR papers report it: each group's (user's) AUC weighted by its
    number of impressions; groups with one class only (AUC undefined) are skipped. NaN if
    no group has both classes."""
    labels = _as_1d("labels", labels).astype(bool)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    groups = _as_1d("groups", groups)
    _check_same_length(labels, predictions)
    _check_same_length(labels, groups)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    total = weight = 0.0
    for rows in np.split(order, bounds):
        positives = int(labels[rows].sum())
        if 0 < positives < len(rows):
            total += len(rows) * auc(labels[rows], predictions[rows])
            weight += len(rows)
    return float(total / weight) if weight else float("nan")


def precision_recall_f1(
    labels: np.ndarray, predictions: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Precision, recall and F1 of predicting positive where the probability is >=
    ``threshold``; a ratio whose denominator is 0 is 0 (scikit-learn's ``zero_division=0``),
    so a model that never predicts a rare positive scores 0, not NaN."""
    labels = _as_1d("labels", labels).astype(bool)
    predicted = _as_1d("predictions", predictions) >= threshold
    _check_same_length(labels, predicted)
    tp = float(np.sum(predicted & labels))
    n_predicted, n_positive = float(predicted.sum()), float(labels.sum())
    return {
        "precision": tp / n_predicted if n_predicted else 0.0,
        "recall": tp / n_positive if n_positive else 0.0,
        "f1": 2 * tp / (n_predicted + n_positive) if n_predicted + n_positive else 0.0,
    }


def logloss(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Binary cross-entropy of probabilities, clipped away from 0 and 1.

    With 2-D ``predictions`` (N, C) of class probabilities and integer ``labels`` it is the
    multiclass cross-entropy.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions, dtype=np.float64)
    _check_same_length(labels, predictions)
    if predictions.ndim == 2:
        p = np.clip(predictions[np.arange(len(labels)), labels.astype(np.int64)], _EPS, 1.0)
        return float(-np.mean(np.log(p)))
    y = _as_1d("labels", labels).astype(np.float64)
    p = np.clip(predictions, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def rmse(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error."""
    labels = _as_1d("labels", labels).astype(np.float64)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(labels, predictions)
    return float(np.sqrt(np.mean((labels - predictions) ** 2)))


def mae(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean absolute error."""
    labels = _as_1d("labels", labels).astype(np.float64)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(labels, predictions)
    return float(np.mean(np.abs(labels - predictions)))


def expected_calibration_error(
    labels: np.ndarray, predictions: np.ndarray, num_bins: int = 15
) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): over ``num_bins`` equal-width probability
    bins, the example-weighted mean of |mean label - mean prediction|."""
    labels = _as_1d("labels", labels).astype(np.float64)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(labels, predictions)
    bins = np.minimum((predictions * num_bins).astype(np.int64), num_bins - 1)
    gap = np.bincount(bins, labels - predictions, minlength=num_bins)
    return float(np.sum(np.abs(gap)) / max(len(labels), 1))


def predicted_over_observed(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean prediction / mean label: 1 for a model calibrated on average."""
    labels = _as_1d("labels", labels).astype(np.float64)
    predictions = _as_1d("predictions", predictions).astype(np.float64)
    _check_same_length(labels, predictions)
    return float(predictions.mean() / max(labels.mean(), 1e-12))


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Share of correct predictions.

    ``predictions`` are either class ids (N,) or class scores (N, C), whose argmax is taken.
    """
    labels = _as_1d("labels", labels)
    predictions = np.asarray(predictions)
    _check_same_length(labels, predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=-1)
    return float(np.mean(labels.astype(np.int64) == predictions.astype(np.int64)))


def _as_2d(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.ndim != 2 or labels.shape != predictions.shape:
        raise ValueError(
            f"multilabel metrics need 2-D labels and predictions of one shape, got "
            f"{labels.shape} vs {predictions.shape}"
        )
    return labels, predictions


def micro_auc(labels: np.ndarray, predictions: np.ndarray) -> float:
    """AUC over all (example, label) pairs pooled together."""
    labels, predictions = _as_2d(labels, predictions)
    return auc(labels.reshape(-1), predictions.reshape(-1))


def macro_auc(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean of per-label AUCs over the labels that have both classes (NaN if none has)."""
    labels, predictions = _as_2d(labels, predictions)
    per_label = [auc(labels[:, c], predictions[:, c]) for c in range(labels.shape[1])]
    defined = [a for a in per_label if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


# --- Top-k ranking metrics -------------------------------------------------------------
# ``ranked`` is (U, k): each evaluated user's recommended item ids, best first.
# ``relevant`` is (U, I) bool: which items are relevant to that user (e.g. test items they
# liked). Per-user metrics are averaged over users with at least one relevant item.


def _check_ranked(ranked: np.ndarray, relevant: np.ndarray | None = None) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (users, k), got shape {ranked.shape}")
    if relevant is not None and (relevant.ndim != 2 or relevant.shape[0] != ranked.shape[0]):
        raise ValueError(
            f"relevant must be (users, items) with ranked's {ranked.shape[0]} users, "
            f"got shape {relevant.shape}"
        )
    return ranked


def _hits(ranked: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, k) bool hit matrix and the (U,) relevant counts, for users with any relevant."""
    ranked = _check_ranked(ranked, relevant)
    relevant = np.asarray(relevant, bool)
    hits = np.take_along_axis(relevant, ranked, axis=1)
    counts = relevant.sum(axis=1)
    keep = counts > 0
    if not keep.any():
        raise ValueError("no user has a relevant item; ranking metrics are undefined")
    return hits[keep], counts[keep]


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """(U, k) ids of each row's k highest scores, best first; ``exclude`` (U, I) bool items
    are never recommended (already seen, not in the catalogue). Ties go to the lower id."""
    scores = np.asarray(scores, np.float64)
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    if k > scores.shape[1]:
        raise ValueError(f"k={k} exceeds the {scores.shape[1]} items")
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over users of |top-k ∩ relevant| / |relevant|."""
    hits, counts = _hits(ranked, relevant)
    return float(np.mean(hits.sum(axis=1) / counts))


def hit_rate_at_k(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Share of users with at least one relevant item in their top k."""
    hits, _ = _hits(ranked, relevant)
    return float(np.mean(hits.any(axis=1)))


def ndcg_at_k(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Mean binary-relevance NDCG@k: DCG over the ideal DCG of min(|relevant|, k) hits."""
    hits, counts = _hits(ranked, relevant)
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discounts
    ideal = np.cumsum(discounts)[np.minimum(counts, k) - 1]
    return float(np.mean(dcg / ideal))


def precision_at_k(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over users (with any relevant item) of |top-k ∩ relevant| / k."""
    hits, _ = _hits(ranked, relevant)
    return float(np.mean(hits.mean(axis=1)))


def mrr_at_k(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Mean reciprocal rank of each user's first relevant item in the top k (0 if none)."""
    hits, _ = _hits(ranked, relevant)
    first = np.argmax(hits, axis=1)
    return float(np.mean(np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)))


def catalogue_coverage(ranked: np.ndarray, num_items: int) -> float:
    """Share of the catalogue's ``num_items`` items that appear in any user's top k."""
    ranked = _check_ranked(ranked)
    return float(len(np.unique(ranked)) / num_items)


def jaccard_similarity(attributes: np.ndarray) -> np.ndarray:
    """(I, I) Jaccard similarity of items' attribute sets from an (I, G) multi-hot matrix;
    two items without attributes count as identical (similarity 1)."""
    a = np.asarray(attributes, bool).astype(np.float64)
    inter = a @ a.T
    sizes = a.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def jaccard_rows(attributes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``rows(ids)``: the rows ``jaccard_similarity(attributes)[ids]``, computed on demand
    (MMR reads k rows of the I x I matrix)."""
    a = np.asarray(attributes, bool).astype(np.float64)
    sizes = a.sum(axis=1)

    def rows(ids: np.ndarray) -> np.ndarray:
        inter = a[ids] @ a.T
        union = sizes[ids][..., None] + sizes[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)

    return rows


def intra_list_diversity(ranked: np.ndarray, attributes: np.ndarray) -> float:
    """Mean over users of the mean pairwise Jaccard distance of their top-k items'
    attribute sets (e.g. genres): 0 when every list is one kind of item."""
    ranked = _check_ranked(ranked)
    k = ranked.shape[1]
    if k < 2:
        raise ValueError("intra-list diversity needs k >= 2")
    sim = jaccard_similarity(attributes)
    pair_sims = sim[ranked[:, :, None], ranked[:, None, :]]  # (U, k, k)
    i, j = np.triu_indices(k, k=1)
    return float(np.mean(1.0 - pair_sims[:, i, j]))


def head_items(counts: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """(I,) bool: the ``fraction`` most-interacted items (by ``counts``, ties to the lower
    id) among those with any interaction; the rest is the long tail."""
    counts = np.asarray(counts)
    num_head = int(np.ceil(fraction * np.count_nonzero(counts)))
    order = np.lexsort((np.arange(len(counts)), -counts))
    head = np.zeros(len(counts), bool)
    head[order[:num_head]] = True
    return head


def long_tail_share(ranked: np.ndarray, is_head: np.ndarray) -> float:
    """Share of all recommended slots filled by long-tail (not head) items."""
    ranked = _check_ranked(ranked)
    return float(1.0 - np.mean(np.asarray(is_head, bool)[ranked]))


def mmr_rerank(
    relevance: np.ndarray,
    similarity: np.ndarray | Callable[[np.ndarray], np.ndarray],
    k: int,
    lam: float,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): greedily pick the item
    maximising ``lam * relevance - (1 - lam) * max similarity to the items already picked``.

    ``relevance`` (U, I) should share the scale of ``similarity`` (I, I), e.g. both in [0, 1];
    ``similarity`` may also be a function of item ids giving their rows (``jaccard_rows``).
    ``lam=1`` is plain top-k. Returns (U, k) ids; ties go to the lower id.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"MMR lambda must lie in [0, 1], got {lam}")
    relevance = np.asarray(relevance, np.float64)
    users, items = relevance.shape
    rows_of = similarity if callable(similarity) else similarity.__getitem__
    if not callable(similarity) and similarity.shape != (items, items):
        raise ValueError(
            f"similarity must be ({items}, {items}) for {items} items, got {similarity.shape}"
        )
    available = np.ones((users, items), bool) if exclude is None else ~np.asarray(exclude, bool)
    if k > available.sum(axis=1).min():
        raise ValueError(f"k={k} exceeds the candidates of some user")
    max_sim = np.zeros((users, items))
    rows = np.arange(users)
    picked = np.zeros((users, k), np.int64)
    for step in range(k):
        gain = lam * relevance - (1.0 - lam) * max_sim
        gain = np.where(available, gain, -np.inf)
        choice = np.argmax(gain, axis=1)  # first maximum: the lower id
        picked[:, step] = choice
        available[rows, choice] = False
        max_sim = np.maximum(max_sim, rows_of(choice))
    return picked
