"""The synthetic two-task regression benchmark of the MMoE paper (Ma et al., KDD 2018, §3.2).

Two unit vectors ``u1 ⟂ u2`` in R^d define the tasks' weights ``w1 = c u1`` and
``w2 = c (p u1 + sqrt(1 - p^2) u2)``, so ``cos(w1, w2) = p``, the knob for how related the
tasks are. Inputs ``x ~ N(0, I_d)``; labels

    y_t = w_t . x + sum_{i=1..m} sin(alpha_i w_t . x + beta_i) + eps_t,   eps_t ~ N(0, noise^2)

with the same ``alpha, beta`` for both tasks. The paper does not publish its ``alpha_i``
and ``beta_i``; we draw them once from N(0, alpha_std^2) and N(0, 1) with ``shape_seed``
(fixed across runs, so only ``correlation`` and the data seed vary). Since the sines are
non-linear, the Pearson correlation of the two labels falls with ``p`` but is not equal to
it (``label_correlation`` measures it). The oracle column is each label without its noise.
"""

from __future__ import annotations

import numpy as np

from mtl_jax.data.schema import FeatureSpec, MultiTaskDataset, Split
from mtl_jax.tasks import TaskSpec


def task_weights(dim: int, correlation: float, scale: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(w1, w2)`` with norms ``scale`` and cosine ``correlation``."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    return w1, w2


def noiseless_label(x: np.ndarray, w: np.ndarray, alpha: np.ndarray, beta: np.ndarray):
    z = x @ w
    return z + np.sin(np.outer(z, alpha) + beta).sum(axis=1)


def simulate_mmoe_synthetic(
    correlation: float = 0.5,
    num_train: int = 10_000,
    num_validation: int = 2_000,
    num_test: int = 2_000,
    dim: int = 100,
    scale: float = 1.0,
    num_sines: int = 10,
    noise_std: float = 0.1,
    alpha_std: float = 1.0,
    shape_seed: int = 0,
    seed: int = 0,
) -> MultiTaskDataset:
    """Train / validation / test splits of the two regression tasks ``y1`` and ``y2``."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [-1, 1], got {correlation}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2 (two orthogonal directions), got {dim}")
    shape_rng = np.random.default_rng(shape_seed)
    alpha = alpha_std * shape_rng.normal(size=num_sines)
    beta = shape_rng.normal(size=num_sines)
    rng = np.random.default_rng(seed)
    w1, w2 = task_weights(dim, correlation, scale, rng)
    n = num_train + num_validation + num_test
    x = rng.normal(size=(n, dim)).astype(np.float32)
    clean = {"y1": noiseless_label(x, w1, alpha, beta), "y2": noiseless_label(x, w2, alpha, beta)}
    labels = {t: (v + noise_std * rng.normal(size=n)).astype(np.float32) for t, v in clean.items()}
    ones = np.ones(n, np.float32)
    everything = Split(
        {"x": x},
        labels,
        {t: ones for t in labels},
        oracle={t: v.astype(np.float32) for t, v in clean.items()},
    )
    bounds = np.cumsum([num_train, num_validation])
    train, val, test = np.split(np.arange(n), bounds)
    return MultiTaskDataset(
        name="mmoe_synthetic",
        features=(FeatureSpec("x", 0, dense_dim=dim),),
        tasks=(TaskSpec("y1", "regression"), TaskSpec("y2", "regression")),
        train=everything.take(train),
        validation=everything.take(val),
        test=everything.take(test),
    )


def label_correlation(dataset: MultiTaskDataset) -> float:
    """Pearson correlation of the two tasks' training labels."""
    return float(np.corrcoef(dataset.train.labels["y1"], dataset.train.labels["y2"])[0, 1])
