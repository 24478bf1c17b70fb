"""Fusing task predictions into one ranking score, and diversifying the top of the list.

A fusion rule (the export's default comes from the run's ``ranking.fusion``; a request may
send its own) is ``{"mode": ..., "weights": {task: w}, "times": field}``:

- ``sum``: sum_t w_t * p_t (probabilities of binary tasks, values of regression tasks);
- ``log_sum``: sum_t w_t * log p_t (a weighted geometric mean, in logs);
- ``product``: prod_t p_t ** w_t, e.g. pCTR x pCVR with both weights 1;
- ``times``: a numeric field every candidate carries (a price, a bid), multiplying the
  score (added as a log under ``log_sum``): pCTR x pCVR x price.

Diversity is maximal marginal relevance (``metrics.mmr_rerank``, the re-ranker the offline
evaluation uses, reading only the similarity rows of the items it picks) over the Jaccard
similarity of the candidates' attributes: the export's
item attributes (e.g. genres) or an input feature's ids (a bag's set, or a category).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl_jax import metrics
from mtl_jax.ranking import FUSION_MODES, RANKABLE_KINDS, fuse
from mtl_jax.serving.rows import RequestError, finite_number


@dataclasses.dataclass(frozen=True)
class Fusion:
    mode: str
    weights: dict[str, float]
    times: str = ""

    @classmethod
    def parse(cls, spec: Any, tasks: Mapping[str, Mapping[str, Any]]) -> Fusion:
        """A rule from its JSON form, each problem a ``RequestError`` naming it."""
        if not isinstance(spec, Mapping):
            raise RequestError(f"fusion: expected an object, got {type(spec).__name__}")
        unknown = sorted(set(spec) - {"mode", "weights", "times"})
        if unknown:
            raise RequestError(f"fusion: unknown keys {unknown}; valid: mode, weights, times")
        mode = spec.get("mode", "sum")
        if mode not in FUSION_MODES:
            raise RequestError(f"fusion.mode: {mode!r}; valid: {list(FUSION_MODES)}")
        weights = spec.get("weights")
        if not isinstance(weights, Mapping) or not weights:
            raise RequestError("fusion.weights: expected an object {task: weight}, not empty")
        out = {}
        for task, w in weights.items():
            if task not in tasks:
                raise RequestError(f"fusion.weights: unknown task {task!r}; tasks: {list(tasks)}")
            if tasks[task]["kind"] not in RANKABLE_KINDS:
                raise RequestError(
                    f"fusion.weights: {task!r} is a {tasks[task]['kind']} task; only binary "
                    "and regression tasks give one score per item"
                )
            if not finite_number(w):
                raise RequestError(f"fusion.weights.{task}: {w!r} is not a finite number")
            out[task] = float(w)
        times = spec.get("times", "")
        if not isinstance(times, str):
            raise RequestError(f"fusion.times: expected a field name, got {times!r}")
        return cls(mode, out, times)

    def times_of(self, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The ``times`` field of each (inline) candidate."""
        values = [c.get(self.times) for c in candidates]
        for i, v in enumerate(values):
            if not finite_number(v):
                raise RequestError(
                    f"candidate {i}: fusion.times field {self.times!r} is {v!r}, not a number"
                )
        return np.asarray(values, np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "weights": self.weights, "times": self.times}

    def __call__(
        self, predictions: Mapping[str, np.ndarray], times: np.ndarray | None = None
    ) -> np.ndarray:
        score = fuse(predictions, self.weights, self.mode)
        if times is not None and self.mode == "log_sum":
            score = score + np.log(np.maximum(times, 1e-12))
        elif times is not None:
            score = score * times
        return np.asarray(score, np.float64)


def parse_diversity(spec: Any, features: Sequence[str]) -> tuple[float, str]:
    """``(lambda, attribute feature or "")`` of a request's ``diversity`` (None: off)."""
    if spec is None:
        return 1.0, ""
    if not isinstance(spec, Mapping):
        raise RequestError("diversity: expected an object {lambda, attribute}")
    unknown = sorted(set(spec) - {"lambda", "attribute"})
    if unknown:
        raise RequestError(f"diversity: unknown keys {unknown}; valid: lambda, attribute")
    lam = spec.get("lambda", 1.0)
    if not finite_number(lam) or not 0.0 <= lam <= 1.0:
        raise RequestError(f"diversity.lambda: {lam!r} is not a number in [0, 1]")
    attribute = spec.get("attribute", "")
    if attribute and attribute not in features:
        raise RequestError(
            f"diversity.attribute: unknown feature {attribute!r}; features: {sorted(features)}"
        )
    return float(lam), attribute


def default_fusion(ranking: Mapping[str, Any], tasks: Mapping[str, Mapping]) -> Fusion:
    """The run's ``ranking.fusion`` weights combined by ``ranking.fusion_mode``; without
    weights, the first binary or regression task alone."""
    fusion = dict(ranking.get("fusion", {}))
    weights = {t: float(w) for t, w in fusion.items() if float(w) != 0.0 and t in tasks}
    if not weights:
        first = next((n for n, t in tasks.items() if t["kind"] in RANKABLE_KINDS), None)
        weights = {first: 1.0} if first else {}
    mode = ranking.get("fusion_mode", "sum")
    return Fusion.parse({"mode": mode, "weights": weights}, tasks)


def attribute_sets(column: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, G) multi-hot of each candidate's ids in ``column`` ((n,) or (n, L) with a mask),
    over the distinct ids present."""
    ids = column.reshape(len(column), -1)
    valid = np.ones(ids.shape, bool) if mask is None else mask.reshape(ids.shape) > 0
    values, inverse = np.unique(ids, return_inverse=True)
    out = np.zeros((len(column), len(values)), bool)
    rows = np.repeat(np.arange(len(column)), ids.shape[1])
    keep = valid.reshape(-1)
    out[rows[keep], inverse.reshape(-1)[keep]] = True
    return out


def top_k(scores: np.ndarray, k: int, attributes: np.ndarray | None, lam: float) -> np.ndarray:
    """Indices of the k best candidates; with ``attributes`` and ``lam < 1``, MMR on their
    Jaccard similarity, the scores scaled to [0, 1] first."""
    k = min(k, len(scores))
    if attributes is None or lam >= 1.0:
        order = np.argsort(-scores, kind="stable")
        return order[:k]
    low, high = scores.min(), scores.max()
    relevance = (scores - low) / max(high - low, 1e-12)
    rows = metrics.jaccard_rows(attributes)  # only the k rows MMR reads, not n x n
    return metrics.mmr_rerank(relevance[None, :], rows, k, lam)[0]
