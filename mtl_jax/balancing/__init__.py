"""How T task losses become one training objective.

This is the seam where task balancing plugs in. For now: equal weighting (``ew``) and fixed
per-task weights (``static``); both reweight losses and so cost one backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("ew", "static")


def names() -> tuple[str, ...]:
    """Names accepted by ``loss_weights``."""
    return METHODS


def loss_weights(
    method: str, task_names: Sequence[str], weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """Per-task loss weights (T,) for a loss-weighting method.

    ``static`` reads ``weights[task]`` (tasks not listed keep weight 1).
    """
    if method == "ew":
        return np.ones(len(task_names), np.float32)
    if method == "static":
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(task_names))
        if unknown:
            raise ValueError(
                f"static weights name unknown tasks {unknown}; tasks: {list(task_names)}"
            )
        bad = {k: v for k, v in weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"static weights must be >= 0, got {bad}")
        return np.array([weights.get(t, 1.0) for t in task_names], np.float32)
    raise ValueError(f"unknown balancing method {method!r}; valid: {METHODS}")


def combine(task_losses: jax.Array, weights: jax.Array) -> jax.Array:
    """The scalar objective: weighted sum of the (T,) task losses."""
    return jnp.sum(task_losses * weights)
