"""Top-k recommendation over the whole catalogue, with an optional diversity re-ranker.

For every evaluated user (one with at least one relevant item in the evaluated split), the
model scores every catalogue item the user has not interacted with in the earlier splits;
items are ranked by one task's prediction or a weighted fusion of several; the top k are
compared with the user's relevant items in the split (e.g. test ratings >= 4). Maximal
marginal relevance re-ranks with a genre-similarity penalty for each configured lambda, so
one report shows what accuracy each step of diversity costs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from mtl_jax import metrics
from mtl_jax.data.schema import MultiTaskDataset, Split
from mtl_jax.tasks import TaskSpec

log = logging.getLogger("mtl_jax")

# an unlabelled split of (user, item) pairs -> {task: (n,) or (n, C) predictions}
PredictFn = Callable[[Split], dict[str, np.ndarray]]

RANKABLE_KINDS = ("binary", "regression")
FUSION_MODES = ("sum", "log_sum", "product")  # ranking.fusion_mode; mtl_jax/serving/ranking.py


def default_config(task_names: Sequence[str]) -> ml_collections.ConfigDict:
    """Off by default (it needs a dataset with a catalogue, such as MovieLens)."""
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.k = 10
    c.relevance_task = ""  # a binary task whose positive labels mark relevant items
    # Ranking score: the fusion of binary (probability) and regression (predicted value)
    # tasks' predictions with these weights, by fusion_mode: sum (sum_t w_t p_t), log_sum
    # (sum_t w_t log p_t) or product (prod_t p_t ** w_t, e.g. P(rated) x P(like | rated)).
    # The offline evaluation and an exported model's /rank (by default; a request may send
    # its own rule, mtl_jax/serving/ranking.py) both use it.
    c.fusion = ml_collections.ConfigDict({t: 0.0 for t in task_names})
    c.fusion_mode = "sum"
    c.mmr_lambdas = (1.0, 0.9, 0.7, 0.5)  # 1.0 = plain ranking
    c.head_fraction = 0.2  # the most-rated share of train items; the rest is the long tail
    c.users_per_chunk = 128
    return c


def check_config(c: ml_collections.ConfigDict, tasks: Sequence[TaskSpec]) -> list[str]:
    """Problems with the ``ranking`` section for these tasks (empty when fine)."""
    if not c.enabled:
        return []
    kinds = {t.name: t.kind for t in tasks}
    problems = []
    if kinds.get(c.relevance_task) != "binary":
        binary = [n for n, k in kinds.items() if k == "binary"]
        problems.append(f"relevance_task {c.relevance_task!r} must be a binary task: {binary}")
    # A config file's fusion lists every task it defines; a run that drops one (weight 0)
    # is fine, weighting a task the run lacks is not.
    unknown = sorted(t for t, w in c.fusion.items() if t not in kinds and float(w) != 0.0)
    if unknown:
        problems.append(f"fusion weights tasks this run lacks {unknown}; tasks: {list(kinds)}")
    weighted = {t: float(w) for t, w in c.fusion.items() if t in kinds and float(w) != 0.0}
    if not weighted:
        problems.append("fusion gives every task weight 0; set e.g. fusion.like=1.0")
    for t in weighted:
        if kinds[t] not in RANKABLE_KINDS:
            problems.append(f"fusion.{t}: a {kinds[t]} task cannot score items")
    if c.k < 1:
        problems.append(f"k must be >= 1, got {c.k}")
    if not c.mmr_lambdas or any(not 0.0 <= lam <= 1.0 for lam in c.mmr_lambdas):
        problems.append(f"mmr_lambdas must be values in [0, 1], got {c.mmr_lambdas}")
    if not 0.0 < c.head_fraction < 1.0:
        problems.append(f"head_fraction must lie in (0, 1), got {c.head_fraction}")
    return problems


def fuse(predictions: dict[str, np.ndarray], weights: dict[str, float], mode: str) -> np.ndarray:
    """One score per row from task predictions, by ``mode`` (``FUSION_MODES``)."""
    p = {t: np.asarray(predictions[t], np.float64) for t in weights}
    if mode == "sum":
        return sum(w * p[t] for t, w in weights.items())
    if mode == "log_sum":
        return sum(w * np.log(np.maximum(p[t], 1e-12)) for t, w in weights.items())
    if mode == "product":
        return np.prod([np.maximum(p[t], 0.0) ** w for t, w in weights.items()], axis=0)
    raise ValueError(f"unknown fusion mode {mode!r}; valid: {FUSION_MODES}")


def _pairs(split: Split, user_key: str, item_key: str) -> tuple[np.ndarray, np.ndarray]:
    return split.features[user_key].astype(np.int64), split.features[item_key].astype(np.int64)


def _unlabelled(features: dict[str, np.ndarray], template: Split) -> Split:
    """A split of ``features`` with zero labels and masks shaped like ``template``'s."""
    n = len(next(iter(features.values())))
    zeros = lambda col: np.zeros((n, *col.shape[1:]), col.dtype)
    return Split(
        features,
        {k: zeros(v) for k, v in template.labels.items()},
        {k: zeros(v) for k, v in template.masks.items()},
    )


def evaluate_ranking(
    predict: PredictFn,
    dataset: MultiTaskDataset,
    c: ml_collections.ConfigDict,
    split: str = "test",
) -> dict[str, dict[str, float]]:
    """``{"mmr_lambda=<lam>": {metric: value}}`` for each configured lambda, plus
    ``"setup"`` with the number of users, items and relevant pairs evaluated."""
    cat = dataset.catalogue
    if cat is None:
        raise ValueError(f"dataset {dataset.name!r} has no catalogue to rank over")
    earlier = {"test": ("train", "validation"), "validation": ("train",)}[split]
    evaluated = dataset.split(split)
    items = np.asarray(cat.items)
    position = np.full(len(cat.item_features[cat.item_key]), -1)  # item id -> column
    position[items] = np.arange(len(items))

    users_col, items_col = _pairs(evaluated, cat.user_key, cat.item_key)
    positive = (evaluated.labels[c.relevance_task] > 0.5) & (evaluated.masks[c.relevance_task] > 0)
    users = np.unique(users_col[positive])
    row = np.full(len(cat.user_features[cat.user_key]), -1)  # user id -> row, or -1
    row[users] = np.arange(len(users))

    relevant = np.zeros((len(users), len(items)), bool)
    relevant[row[users_col[positive]], position[items_col[positive]]] = True
    seen = np.zeros_like(relevant)
    for name in earlier:
        u, i = _pairs(dataset.split(name), cat.user_key, cat.item_key)
        keep = row[u] >= 0
        seen[row[u[keep]], position[i[keep]]] = True

    scores = np.zeros((len(users), len(items)))
    weights = {t: float(w) for t, w in c.fusion.items() if float(w) != 0.0}
    for start in range(0, len(users), c.users_per_chunk):
        chunk = users[start : start + c.users_per_chunk]
        pair_users = np.repeat(chunk, len(items))
        pair_items = np.tile(items, len(chunk))
        preds = predict(_unlabelled(cat.pair_features(pair_users, pair_items), evaluated))
        fused = fuse(preds, weights, c.fusion_mode)
        scores[start : start + len(chunk)] = fused.reshape(len(chunk), len(items))

    _, train_items = _pairs(dataset.train, cat.user_key, cat.item_key)
    counts = np.bincount(position[train_items], minlength=len(items))
    is_head = metrics.head_items(counts, c.head_fraction)
    attributes = np.asarray(cat.item_attributes)[items]
    similarity = metrics.jaccard_similarity(attributes)
    # MMR mixes relevance with similarity in [0, 1]: scale each user's candidate scores so.
    masked = np.where(seen, np.nan, scores)
    low, high = np.nanmin(masked, axis=1, keepdims=True), np.nanmax(masked, axis=1, keepdims=True)
    relevance = (scores - low) / np.maximum(high - low, 1e-12)

    out: dict[str, dict[str, float]] = {
        "setup": {
            "users": int(len(users)),
            "items": int(len(items)),
            "relevant_pairs": int(relevant.sum()),
            "k": int(c.k),
        }
    }
    for lam in c.mmr_lambdas:
        ranked = metrics.mmr_rerank(relevance, similarity, c.k, float(lam), exclude=seen)
        out[f"mmr_lambda={float(lam):g}"] = {
            f"recall@{c.k}": metrics.recall_at_k(ranked, relevant),
            f"ndcg@{c.k}": metrics.ndcg_at_k(ranked, relevant),
            f"hr@{c.k}": metrics.hit_rate_at_k(ranked, relevant),
            f"precision@{c.k}": metrics.precision_at_k(ranked, relevant),
            f"mrr@{c.k}": metrics.mrr_at_k(ranked, relevant),
            f"coverage@{c.k}": metrics.catalogue_coverage(ranked, len(items)),
            f"ild@{c.k}": metrics.intra_list_diversity(ranked, attributes),
            "long_tail_share": metrics.long_tail_share(ranked, is_head),
        }
    return out


def format_ranking(results: dict[str, dict[str, float]]) -> list[str]:
    """Console lines: one per lambda."""
    lines = []
    for name, values in results.items():
        if name != "setup":
            lines.append(f"{name:<16} " + " ".join(f"{m}={v:.4f}" for m, v in values.items()))
    return lines
