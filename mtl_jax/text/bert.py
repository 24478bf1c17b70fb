"""A BERT encoder in flax.linen that runs Hugging Face BERT checkpoints (MiniLM, BERT-base...).

Converting a Hugging Face (PyTorch) state dict is a rename and a transpose of each dense
weight (``params_from_state_dict``).
Matmuls run at the highest precision: on TPUs the default float32 matmul goes through
bfloat16, which would move embeddings off the reference by more than our 1e-4 tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.text.decoder import Linear

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str = "gelu"

    @classmethod
    def from_json(cls, path: pathlib.Path) -> BertConfig:
        raw = json.loads(pathlib.Path(path).read_text())
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: model_type {raw['model_type']!r} is not a BERT model")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        if raw.get("hidden_act", "gelu") not in ("gelu", "relu"):
            raise ValueError(f"{path}: activation {raw['hidden_act']!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


# LoRA targets are named as in the decoders (mtl_jax/text/decoder.py): their BERT layers.
LORA_NAMES = {
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
    "o_proj": "attention_output",
    "up_proj": "intermediate",
    "down_proj": "output",
}


class BertLayer(nn.Module):
    """One transformer layer; with ``lora`` (a ``decoder.LoRAConfig``) its dense layers are
    frozen and those the config targets (``LORA_NAMES``) carry adapters."""

    config: BertConfig
    lora: Any = None
    adapted: bool = True  # this layer carries adapters (LoRAConfig.layers)

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, task: int | None = None) -> jax.Array:
        c, lora = self.config, self.lora
        heads, width = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        targets = {LORA_NAMES[t] for t in lora.targets if t in LORA_NAMES} if lora else set()

        def _dense(features: int, name: str):
            if lora is None:
                return nn.Dense(features, precision=_HIGHEST, name=name)
            adapter = lora if self.adapted and name in targets else None
            layer = Linear(features, True, adapter, frozen=True, precision=_HIGHEST, name=name)
            return lambda h: layer(h, task)

        def split(t):  # (B, L, H) -> (B, heads, L, width)
            return t.reshape(*t.shape[:2], heads, width).transpose(0, 2, 1, 3)

        q = split(_dense(c.hidden_size, "query")(x))
        k = split(_dense(c.hidden_size, "key")(x))
        v = split(_dense(c.hidden_size, "value")(x))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=_HIGHEST) / np.sqrt(width)
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)  # bias: (B, 1, 1 or L, L)
        context = jnp.einsum("bhqk,bhkd->bhqd", probs, v, precision=_HIGHEST)
        context = context.transpose(0, 2, 1, 3).reshape(x.shape)
        attended = _dense(c.hidden_size, "attention_output")(context)
        x = nn.LayerNorm(c.layer_norm_eps, name="attention_norm")(x + attended)
        h = _dense(c.intermediate_size, "intermediate")(x)
        h = jax.nn.gelu(h, approximate=False) if c.hidden_act == "gelu" else jax.nn.relu(h)
        out = _dense(c.hidden_size, "output")(h)
        return nn.LayerNorm(c.layer_norm_eps, name="output_norm")(x + out)


class BertEncoder(nn.Module):
    """Token ids and attention mask (B, L) -> last hidden states (B, L, hidden).

    ``trainable_layers`` (None: all) stops gradients below the top that many layers, so
    fine-tuning the top k never pays for the backward pass through the frozen rest.

    Packed rows: with ``segment_ids`` (B, L; 1, 2, ... per text, 0 for padding) and
    ``position_ids`` (each text's own 0, 1, ...), a row holds several texts and a token
    attends only to tokens of its own text; ``attention_mask`` is then ignored. Masked
    scores get the most negative float, whose ``exp`` is exactly 0, so a text's hidden
    states are those it has alone in a padded row, up to float round-off.
    """

    config: BertConfig
    trainable_layers: int | None = None
    lora: Any = None  # a decoder.LoRAConfig: frozen weights, adapters (see BertLayer)

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        task: int | None = None,
    ) -> jax.Array:
        c = self.config
        length = input_ids.shape[1]
        if position_ids is None and length > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{c.max_position_embeddings}"
            )
        words = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")
        positions = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")
        types = nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")
        x = (
            words(input_ids)
            + (
                positions(jnp.arange(length))[None]
                if position_ids is None
                else positions(position_ids)
            )
            + types(jnp.zeros_like(input_ids))
        )
        x = nn.LayerNorm(c.layer_norm_eps, name="embeddings_norm")(x)
        # Masked keys get the most negative float, as Hugging Face does: exp() is exactly 0.
        if segment_ids is None:
            allowed = (attention_mask > 0)[:, None, None, :]
        else:
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            allowed = (same & (segment_ids[:, None, :] > 0))[:, None]
        mask_bias = jnp.where(allowed, 0.0, jnp.finfo(x.dtype).min).astype(x.dtype)
        first_trainable = c.num_hidden_layers - (
            c.num_hidden_layers if self.trainable_layers is None else self.trainable_layers
        )
        for i in range(c.num_hidden_layers):
            if i == first_trainable:
                x = jax.lax.stop_gradient(x) if i > 0 else x
            adapted = self.lora is None or self.lora.adapts_layer(i, c.num_hidden_layers)
            x = BertLayer(c, self.lora, adapted, name=f"layer_{i}")(x, mask_bias, task)
        if first_trainable >= c.num_hidden_layers:
            x = jax.lax.stop_gradient(x)
        return x


def mean_pool_normalize(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """sentence-transformers' mean pooling over real tokens, then L2 normalisation."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    pooled = jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    return _l2_normalize(pooled)


def segment_mean_pool_normalize(
    hidden: jax.Array, segment_ids: jax.Array, num_segments: int
) -> jax.Array:
    """Mean pooling per text of packed rows: (B, L, D) -> (B, num_segments, D), text k of a
    row being its tokens with segment id k + 1; then L2 normalisation."""
    one_hot = (segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None]).astype(
        hidden.dtype
    )  # (B, S, L)
    sums = jnp.einsum("bsl,bld->bsd", one_hot, hidden, precision=_HIGHEST)
    pooled = sums / jnp.maximum(jnp.sum(one_hot, axis=-1, keepdims=True), 1e-9)
    return _l2_normalize(pooled)


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Hugging Face module path (under ``encoder.layer.<i>.``) -> our module name, and the kind.
_LAYER_MODULES = {
    "attention.self.query": ("query", "dense"),
    "attention.self.key": ("key", "dense"),
    "attention.self.value": ("value", "dense"),
    "attention.output.dense": ("attention_output", "dense"),
    "attention.output.LayerNorm": ("attention_norm", "norm"),
    "intermediate.dense": ("intermediate", "dense"),
    "output.dense": ("output", "dense"),
    "output.LayerNorm": ("output_norm", "norm"),
}


def _convert(state: dict[str, np.ndarray], name: str, kind: str) -> dict[str, np.ndarray]:
    if kind == "dense":  # PyTorch Linear stores (out, in)
        return {"kernel": state[name + ".weight"].T, "bias": state[name + ".bias"]}
    if kind == "norm":
        return {"scale": state[name + ".weight"], "bias": state[name + ".bias"]}
    return {"embedding": state[name + ".weight"]}


def params_from_state_dict(state: dict[str, np.ndarray], config: BertConfig) -> dict[str, Any]:
    """Flax parameters of ``BertEncoder(config)`` from a Hugging Face BERT state dict (the
    pooler and position-id buffers are not used and are skipped)."""
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    try:
        params: dict[str, Any] = {
            f"layer_{i}": {
                ours: _convert(state, f"{prefix}encoder.layer.{i}.{theirs}", kind)
                for theirs, (ours, kind) in _LAYER_MODULES.items()
            }
            for i in range(config.num_hidden_layers)
        }
        for sub in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            params[sub] = _convert(state, f"{prefix}embeddings.{sub}", "embed")
        params["embeddings_norm"] = _convert(state, f"{prefix}embeddings.LayerNorm", "norm")
    except KeyError as e:
        raise ValueError(f"the checkpoint lacks tensor {e.args[0]!r} of a BERT encoder") from e
    expected = jax.eval_shape(
        lambda: BertEncoder(config).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
        )["params"]
    )
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    want = jax.tree.map(lambda a: tuple(a.shape), expected)
    if got != want:
        raise ValueError(f"checkpoint shapes {got} do not match the config's {want}")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)
