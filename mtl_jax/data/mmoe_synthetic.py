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

import jax
import jax.numpy as jnp
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


# --- The same generator in JAX, for many independent problems trained at once ---------------
# experiments/mmoe_synthetic.py vmaps whole runs over seeds: each seed is its own problem
# (task directions, sine shapes, inputs, noise), and examples are generated from their index
# inside the jitted step, so S seeds x 100,000 examples never sit in memory.


def draw_problem(key: jax.Array, dim: int, num_sines: int, alpha_std: float) -> dict:
    """One problem of the paper's family: orthonormal ``u1, u2`` (``(dim, 2)``), the sines'
    ``alpha ~ N(0, alpha_std^2)`` and ``beta ~ N(0, 1)``, and the keys of its inputs and
    label noise. The task correlation is applied later (``examples``), so that problems
    drawn from the same key differ across correlations only in ``w2``."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2 (two orthogonal directions), got {dim}")
    k_dirs, k_alpha, k_beta, k_x, k_noise = jax.random.split(key, 5)
    q, _ = jnp.linalg.qr(jax.random.normal(k_dirs, (dim, 2)))
    return {
        "directions": q,
        "alpha": alpha_std * jax.random.normal(k_alpha, (num_sines,)),
        "beta": jax.random.normal(k_beta, (num_sines,)),
        "x_key": k_x,
        "noise_key": k_noise,
    }


def problem_weights(problem: dict, correlation: float, scale: float) -> jax.Array:
    """``(dim, 2)``: the columns ``w1 = c u1`` and ``w2 = c (p u1 + sqrt(1 - p^2) u2)``."""
    u1, u2 = problem["directions"][:, 0], problem["directions"][:, 1]
    w2 = correlation * u1 + jnp.sqrt(1.0 - correlation**2) * u2
    return scale * jnp.stack([u1, w2], axis=1)


def examples(
    problem: dict, indices: jax.Array, correlation: float, scale: float, noise_std: float
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Examples ``indices`` of ``problem``: inputs ``(B, dim)``, noisy labels and noiseless
    labels of ``y1`` and ``y2``. Example ``i`` is the same array wherever it is asked for
    (its input and noise come from ``fold_in(key, i)``), so a range of indices is a fixed
    training set and the indices past it a fresh test set of the same problem."""
    dim = problem["directions"].shape[0]
    x = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(problem["x_key"], i), (dim,)))(
        indices
    )
    z = x @ problem_weights(problem, correlation, scale)  # (B, 2)
    sines = jnp.sin(z[..., None] * problem["alpha"] + problem["beta"]).sum(-1)
    clean = z + sines
    noise = jax.vmap(
        lambda i: jax.random.normal(jax.random.fold_in(problem["noise_key"], i), (2,))
    )(indices)
    noisy = clean + noise_std * noise
    names = ("y1", "y2")
    return (
        x,
        {t: noisy[:, k] for k, t in enumerate(names)},
        {t: clean[:, k] for k, t in enumerate(names)},
    )
