"""Gate health: how spread each softmax gate's weights are, and how much each expert is used.

A gate that collapses onto one expert turns a mixture-of-experts trunk into a shared bottom
without any error; these statistics make that visible in metrics.jsonl and the console.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from mtl_jax.models.model import MultiTaskModel


def gate_statistics(intermediates: Any) -> dict[str, dict[str, jax.Array]]:
    """``{gate path: {"entropy": (G,), "usage": (G, E)}}`` for every sown ``*gate_weights``
    array (B, G, E): the mean entropy of each gate divided by log E (1 = uniform, 0 = one
    expert), and each expert's mean weight under each gate."""
    flat = traverse_util.flatten_dict(intermediates, sep="/")
    out = {}
    for path, values in flat.items():
        if not path.endswith("gate_weights"):
            continue
        weights_bge = values[-1] if isinstance(values, tuple) else values
        num_experts = weights_bge.shape[-1]
        entropy_bg = -jnp.sum(weights_bge * jnp.log(jnp.maximum(weights_bge, 1e-12)), -1)
        scale = jnp.log(num_experts) if num_experts > 1 else 1.0
        out[path] = {"entropy": entropy_bg.mean(0) / scale, "usage": weights_bge.mean(0)}
    return out


def make_gate_stats(model: MultiTaskModel):
    """``(params, batch) -> gate_statistics`` of one deterministic forward pass."""

    def fn(params, batch):
        _, state = model.apply(
            {"params": params}, batch["features"], train=False, mutable=["intermediates"]
        )
        return gate_statistics(state.get("intermediates", {}))

    return fn


def summarize(stats: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flat log record: per gate path, the lowest gate entropy and the largest expert share."""
    record = {}
    for path, s in stats.items():
        name = path.removeprefix("trunk/").replace("/", ".")
        record[f"gates/{name}/min_entropy"] = float(jnp.min(s["entropy"]))
        record[f"gates/{name}/max_usage"] = float(jnp.max(s["usage"]))
    return record
