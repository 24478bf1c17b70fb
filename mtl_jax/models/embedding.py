"""Shared feature embedding: one table per categorical feature, concatenated."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.data.schema import FeatureSpec


class FeatureEmbedding(nn.Module):
    """Looks up every categorical feature's id in its own table and appends the dense
    features as they are; (B,) ids per feature -> (B, F * dim + dense dims).

    With ``pairwise_dots`` the F * (F - 1) / 2 dot products between feature embeddings are
    appended (as in DLRM): user-item affinity is largely bilinear, which an MLP over
    concatenated embeddings approximates poorly from little data.
    """

    features: Sequence[FeatureSpec]
    embed_dim: int
    pairwise_dots: bool = False

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
        missing = [spec.name for spec in self.features if spec.name not in features]
        if missing:
            raise KeyError(f"batch lacks input features {missing}; it has {sorted(features)}")
        # Rows are the logical "vocab" axis: the mesh rules shard big tables by rows.
        init = nn.with_logical_partitioning(nn.initializers.normal(stddev=0.05), ("vocab", "embed"))
        vectors = [
            nn.Embed(spec.vocab_size, self.embed_dim, embedding_init=init, name=spec.name)(
                features[spec.name]
            )
            for spec in self.features
            if not spec.is_dense
        ]
        dense = [features[spec.name].astype(jnp.float32) for spec in self.features if spec.is_dense]
        out = jnp.concatenate(vectors + dense, axis=-1)
        if self.pairwise_dots and len(vectors) > 1:
            stacked_bfd = jnp.stack(vectors, axis=1)
            dots_bff = jnp.einsum("bfd,bgd->bfg", stacked_bfd, stacked_bfd)
            i, j = jnp.triu_indices(len(vectors), k=1)
            out = jnp.concatenate([out, dots_bff[:, i, j]], axis=-1)
        return out
