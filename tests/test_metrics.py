"""Metrics against brute-force references on random data."""

import itertools

import numpy as np
import pytest

from mtl_jax import metrics


def brute_force_auc(labels, scores):
    """P(score_pos > score_neg) + 0.5 P(tie), over every positive/negative pair."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_distinct", [3, 20, 10_000])  # heavy ties, some ties, no ties
def test_auc_matches_brute_force(seed, num_distinct):
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.random(n) < 0.3
    scores = rng.integers(num_distinct, size=n) / num_distinct + 0.2 * labels
    assert metrics.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_auc_matches_brute_force_over_pairs(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(30)
    s = np.round(rng.random(30), 1)  # ties
    num = den = 0.0
    for i, j in itertools.permutations(range(30), 2):
        w = p[i] * (1 - p[j])
        den += w
        num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert metrics.expected_auc(p, s) == pytest.approx(num / den, abs=1e-12)
    # With 0/1 probabilities it is the ordinary AUC.
    y = rng.random(30) < 0.4
    assert metrics.expected_auc(y.astype(float), s) == pytest.approx(metrics.auc(y, s))
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_auc(p + 1.0, s)


def test_auc_edge_cases():
    assert metrics.auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert metrics.auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert metrics.auc(np.array([1, 0, 1, 0]), np.full(4, 0.3)) == 0.5
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5.0)))


def test_logloss_matches_definition():
    rng = np.random.default_rng(0)
    y = (rng.random(100) < 0.4).astype(float)
    p = rng.uniform(0.01, 0.99, 100)
    expected = -np.mean([np.log(pi) if yi else np.log(1 - pi) for yi, pi in zip(y, p, strict=True)])
    assert metrics.logloss(y, p) == pytest.approx(expected, rel=1e-12)
    # Multiclass: 2-D probabilities and integer labels.
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(4, size=50)
    expected = -np.mean([np.log(probs[i, labels[i]]) for i in range(50)])
    assert metrics.logloss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_regression_metrics_match_definition():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=200), rng.normal(size=200)
    assert metrics.rmse(y, p) == pytest.approx(
        np.sqrt(sum((a - b) ** 2 for a, b in zip(y, p, strict=True)) / 200)
    )
    assert metrics.mae(y, p) == pytest.approx(
        sum(abs(a - b) for a, b in zip(y, p, strict=True)) / 200
    )


def test_accuracy_from_ids_and_scores():
    labels = np.array([0, 1, 2, 2])
    assert metrics.accuracy(labels, np.array([0, 1, 1, 2])) == 0.75
    scores = np.eye(3)[[0, 2, 2, 2]]
    assert metrics.accuracy(labels, scores) == 0.75


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(3,\) vs \(4,\)"):
        metrics.rmse(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        metrics.auc(np.zeros((2, 2)), np.zeros((2, 2)))


def test_micro_and_macro_auc_match_sklearn_definitions():
    rng = np.random.default_rng(3)
    labels = (rng.random((60, 4)) < 0.3).astype(float)
    labels[:, 3] = 0.0  # a label with one class only: left out of the macro mean
    scores = rng.random((60, 4)) + 0.3 * labels
    pooled = brute_force_auc(labels.reshape(-1), scores.reshape(-1))
    assert metrics.micro_auc(labels, scores) == pytest.approx(pooled, abs=1e-12)
    per_label = [brute_force_auc(labels[:, c], scores[:, c]) for c in range(3)]
    assert metrics.macro_auc(labels, scores) == pytest.approx(np.mean(per_label), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(60, 4\) vs \(60, 3\)"):
        metrics.macro_auc(labels, scores[:, :3])


# --- GAUC, precision/recall/F1, precision@k and MRR against brute force -----------------


def _brute_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    return sum(pairs) / len(pairs)


def test_gauc_weights_each_users_auc_by_impressions_and_skips_one_class_users():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, size=300)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.4 * labels, 1)  # ties included
    labels[groups == 3] = True  # a user with only positives: skipped
    labels[groups == 4] = False  # and one with only negatives
    total = weight = 0.0
    for g in np.unique(groups):
        y, s = labels[groups == g], scores[groups == g]
        if 0 < y.sum() < len(y):
            total += len(y) * _brute_auc(y, s)
            weight += len(y)
    assert metrics.gauc(labels, scores, groups) == pytest.approx(total / weight)
    assert np.isnan(metrics.gauc([1, 1, 0], [0.2, 0.3, 0.1], [0, 0, 1]))


def test_precision_recall_f1_at_a_threshold():
    labels = np.array([1, 1, 0, 0, 1, 0])
    probs = np.array([0.9, 0.4, 0.6, 0.1, 0.7, 0.3])
    got = metrics.precision_recall_f1(labels, probs, threshold=0.5)
    tp, fp, fn = 2, 1, 1  # predicted positive: 0.9, 0.6, 0.7
    assert got["precision"] == pytest.approx(tp / (tp + fp))
    assert got["recall"] == pytest.approx(tp / (tp + fn))
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert metrics.precision_recall_f1(labels, probs, threshold=0.35)["recall"] == 1.0
    nothing = metrics.precision_recall_f1(labels, probs, threshold=0.95)  # none predicted
    assert nothing == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_precision_at_k_and_mrr_match_loops():
    rng = np.random.default_rng(3)
    relevant = rng.random((20, 30)) < 0.1
    relevant[0] = False  # a user without relevant items does not count
    ranked = np.argsort(-rng.random((20, 30)), axis=1)[:, :5]
    precisions, reciprocal = [], []
    for user in range(20):
        if not relevant[user].any():
            continue
        hits = [relevant[user, i] for i in ranked[user]]
        precisions.append(sum(hits) / 5)
        reciprocal.append(next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0))
    assert metrics.precision_at_k(ranked, relevant) == pytest.approx(np.mean(precisions))
    assert metrics.mrr_at_k(ranked, relevant) == pytest.approx(np.mean(reciprocal))
