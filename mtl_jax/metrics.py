"""Evaluation metrics on host numpy arrays, called like scikit-learn: ``f(labels, predictions)``.

Metrics that are exact over a whole split (AUC needs every score at once) run on the host
after the jitted eval step has produced predictions; losses are accumulated on device as
mergeable (sum, count) pairs instead (see ``mtl_jax.tasks``).
"""

from __future__ import annotations

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
