"""Shared feature embedding: one table per categorical feature, concatenated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.data.schema import FeatureSpec, bag_mask_name
from mtl_jax.text.bert import BertEncoder, mean_pool_normalize

EMBEDDING_DTYPES = ("float32", "bfloat16")


class FeatureEmbedding(nn.Module):
    """Looks up every categorical feature's id in its own table (a bag feature: the mean of
    its ids' rows) and appends the dense features as they are; (B,) ids per feature ->
    (B, F * dim + dense dims), plus one ``dim``-wide block per text feature.

    With ``pairwise_dots`` the F * (F - 1) / 2 dot products between feature embeddings are
    appended (as in DLRM): user-item affinity is largely bilinear, which an MLP over
    concatenated embeddings approximates poorly from little data.
    """

    features: Sequence[FeatureSpec]
    embed_dim: int
    pairwise_dots: bool = False
    # Text features: (id feature, number of ids) pairs. Each id's pretrained sentence
    # embedding sits in a frozen ``text_table_<feature>`` (filled in by the trainer, never
    # updated) and a learned ``text_proj_<feature>`` maps it to ``embed_dim``, appended
    # like one more feature embedding: a cold item's text still says what it is.
    text_features: Sequence[tuple[str, int]] = ()
    text_dim: int = 384
    # Fine-tune mode: instead of frozen vectors, each id's token ids sit in a frozen
    # ``text_tokens_<feature>`` table (float32 holds them exactly; 0 = [PAD]) and one shared
    # ``text_encoder`` (this BERT config) runs on the batch's texts, its top
    # ``text_trainable_layers`` layers training.
    text_encoder: Any = None
    text_token_length: int = 0
    text_trainable_layers: int = 0
    # In training, zero each example's embedding of these id features with this probability.
    id_dropout: float = 0.0
    id_dropout_features: Sequence[str] = ()
    # (feature, rows) pairs: declare these tables with ``rows`` rows instead of the
    # vocabulary's, for a train step that runs on the rows its batch looks up (the ids are
    # then row numbers of that small table; see mtl_jax/sparse_rows.py).
    lookup_rows: Sequence[tuple[str, int]] = ()
    # Storage dtype of the id tables; looked-up vectors are float32 whatever it is (only the
    # batch's rows are converted, never a whole table).
    table_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        missing = [spec.name for spec in self.features if spec.name not in features]
        if missing:
            raise KeyError(f"batch lacks input features {missing}; it has {sorted(features)}")
        # Rows are the logical "vocab" axis: the mesh rules shard big tables by rows.
        normal = nn.initializers.normal(stddev=0.05)
        # Drawn in float32 whatever the storage dtype: a bfloat16 table starts as the float32
        # table rounded, not as other random numbers.
        init = nn.with_logical_partitioning(
            lambda key, shape, dtype: normal(key, shape, jnp.float32).astype(dtype),
            ("vocab", "embed"),
        )
        vectors = []
        rows_of = dict(self.lookup_rows)
        for spec in self.features:
            if spec.is_dense:
                continue
            rows = rows_of.get(spec.name, spec.vocab_size)
            table = nn.Embed(
                rows,
                self.embed_dim,
                embedding_init=init,
                param_dtype=self.table_dtype,
                name=spec.name,
            )
            vector = table(features[spec.name]).astype(jnp.float32)
            if spec.is_bag:  # the mean of the bag's valid entries; an empty bag is zeros
                mask = features[bag_mask_name(spec.name)].astype(jnp.float32)
                count = jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
                vector = jnp.einsum("bld,bl->bd", vector, mask) / count
            if train and self.id_dropout > 0 and spec.name in self.id_dropout_features:
                rng = self.make_rng("dropout")
                known = jax.random.bernoulli(rng, 1.0 - self.id_dropout, vector.shape[:1])
                vector = vector * known[:, None]  # not rescaled: zero means "unknown id"
            vectors.append(vector)
        rows = nn.with_logical_partitioning(nn.initializers.zeros, ("vocab", None))
        encoder = None
        if self.text_encoder is not None and self.text_features:
            encoder = BertEncoder(
                self.text_encoder, self.text_trainable_layers, name="text_encoder"
            )
        for name, num_ids in self.text_features:
            if encoder is None:
                table = self.param(f"text_table_{name}", rows, (num_ids, self.text_dim))
                text_vectors = jax.lax.stop_gradient(table)[features[name]]
            else:
                shape = (num_ids, self.text_token_length)
                tokens = self.param(f"text_tokens_{name}", rows, shape)
                ids = jax.lax.stop_gradient(tokens)[features[name]].astype(jnp.int32)
                mask = (ids > 0).astype(jnp.int32)
                text_vectors = mean_pool_normalize(encoder(ids, mask), mask)
            vectors.append(nn.Dense(self.embed_dim, name=f"text_proj_{name}")(text_vectors))
        dense = [features[spec.name].astype(jnp.float32) for spec in self.features if spec.is_dense]
        out = jnp.concatenate(vectors + dense, axis=-1)
        if self.pairwise_dots and len(vectors) > 1:
            # One product-and-sum per pair (triu order): as a (F x D)(D x F) matmul per
            # example, XLA:CPU ran a batched matmul of tiny matrices, forward and backward
            # (the e-commerce EW step 5.9 -> 5.2 ms).
            count = len(vectors)
            dots = jnp.stack(
                [
                    jnp.sum(vectors[a] * vectors[b], axis=-1)
                    for a in range(count)
                    for b in range(a + 1, count)
                ],
                axis=-1,
            )
            out = jnp.concatenate([out, dots], axis=-1)
        return out
