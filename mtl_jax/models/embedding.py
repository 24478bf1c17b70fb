"""Shared feature embedding: one table per categorical feature, concatenated."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.data.schema import FeatureSpec


class FeatureEmbedding(nn.Module):
    """Looks up every feature's id in its own table; (B,) ids per feature -> (B, F * dim)."""

    features: Sequence[FeatureSpec]
    embed_dim: int

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
        missing = [spec.name for spec in self.features if spec.name not in features]
        if missing:
            raise KeyError(f"batch lacks input features {missing}; it has {sorted(features)}")
        init = nn.initializers.normal(stddev=0.05)
        vectors = [
            nn.Embed(spec.vocab_size, self.embed_dim, embedding_init=init, name=spec.name)(
                features[spec.name]
            )
            for spec in self.features
        ]
        return jnp.concatenate(vectors, axis=-1)
