"""The multi-task recommender: FeatureEmbedding -> trunk -> one tower per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.data.schema import FeatureSpec
from mtl_jax.models.embedding import FeatureEmbedding
from mtl_jax.models.layers import MLP
from mtl_jax.models.trunks import make_trunk
from mtl_jax.tasks import TaskSpec


class Tower(nn.Module):
    """A task's head: an MLP and an output layer sized for the task kind."""

    output_dim: int
    hidden: Sequence[int]
    dropout: float = 0.0
    output_bias: Sequence[float] | None = None  # initial bias, e.g. the train prior

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        h = MLP(self.hidden, self.dropout, name="mlp")(h, train=train)
        bias_init = nn.initializers.zeros
        if self.output_bias is not None:
            bias = jnp.asarray(self.output_bias, jnp.float32)
            bias_init = lambda *_: bias
        out = nn.Dense(self.output_dim, bias_init=bias_init, name="out")(h)
        return out[..., 0] if self.output_dim == 1 else out


class MultiTaskModel(nn.Module):
    """Maps a batch's feature ids to one logit array per task: ``{task: (B,) or (B, C)}``.

    Top-level module names are the parameter groups: ``embedding``, ``trunk``, ``towers``.
    """

    features: Sequence[FeatureSpec]
    tasks: Sequence[TaskSpec]
    config: Any  # the config's ``model`` section
    output_biases: Sequence[Sequence[float]] | None = None  # per task, see Tower

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], *, train: bool = False):
        x = FeatureEmbedding(
            self.features, self.config.embed_dim, self.config.pairwise_dots, name="embedding"
        )(features)
        reps = make_trunk(self.config.trunk, len(self.tasks), self.config)(x, train=train)
        return {
            task.name: Tower(
                task.output_dim,
                tuple(self.config.tower_hidden),
                self.config.dropout,
                None if self.output_biases is None else self.output_biases[i],
                name=f"tower_{task.name}",
            )(rep, train=train)
            for i, (task, rep) in enumerate(zip(self.tasks, reps, strict=True))
        }
