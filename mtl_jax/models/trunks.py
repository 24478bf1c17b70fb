"""Shared trunks: map the embedded input to one representation per task.

Every trunk returns a list of T arrays (B, H), one per task, so heads never need to know
how sharing was done.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.layers import MLP, ExpertMLPs


class SharedBottom(nn.Module):
    """One MLP shared by all tasks (Caruana 1997)."""

    num_tasks: int
    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        h = MLP(self.hidden, self.dropout, name="bottom")(x, train=train)
        return [h] * self.num_tasks


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    Experts are shared; each task has its own softmax gate over them, so tasks that disagree
    can draw on different experts. The gates' mixture weights are sown as
    ``intermediates/gate_weights`` (B, T, E) for diagnostics (gate entropy, utilisation).
    """

    num_tasks: int
    num_experts: int
    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        experts_beh = ExpertMLPs(self.num_experts, self.hidden, self.dropout, name="experts")(
            x, train=train
        )
        # All T gates as one Dense with T * E outputs: (B, T, E) softmax weights.
        gate_logits = nn.Dense(self.num_tasks * self.num_experts, name="gates")(x)
        gates_bte = jax.nn.softmax(
            gate_logits.reshape(x.shape[0], self.num_tasks, self.num_experts), axis=-1
        )
        self.sow("intermediates", "gate_weights", gates_bte)
        mixed_bth = jnp.einsum("bte,beh->bth", gates_bte, experts_beh)
        return [mixed_bth[:, t] for t in range(self.num_tasks)]


TRUNKS = ("shared_bottom", "mmoe")


def make_trunk(name: str, num_tasks: int, model_config) -> nn.Module:
    hidden = tuple(model_config.trunk_hidden)
    if name == "shared_bottom":
        return SharedBottom(num_tasks, hidden, model_config.dropout)
    if name == "mmoe":
        return MMoE(num_tasks, model_config.num_experts, hidden, model_config.dropout)
    raise ValueError(f"unknown trunk {name!r}; valid: {TRUNKS}")
