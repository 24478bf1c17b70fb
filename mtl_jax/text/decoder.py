"""Decoder language models of the Llama and Qwen2 families in Flax, read from a Hugging
Face directory (``config.json``, ``model.safetensors`` or sharded safetensors with their
index).

The architecture both families share: token embeddings; per layer, RMSNorm -> grouped-query
self-attention with rotary position embeddings (RoPE) -> residual, RMSNorm -> SwiGLU MLP ->
residual; a final RMSNorm. Qwen2 adds biases to the q/k/v projections (Llama may, with
``attention_bias``). Attention is causal and ignores padded keys (right padding).
``decoder_hidden_states`` is the public parity check against the original implementation.
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

from mtl_jax.errors import UserError

MODEL_TYPES = ("llama", "qwen2")


class DecoderFilesError(UserError, FileNotFoundError):
    """A decoder directory that is missing a file or holds an unsupported model."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    attention_bias: bool
    mlp_bias: bool = False
    tie_word_embeddings: bool = False

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> DecoderConfig:
        path = pathlib.Path(path)
        if not path.is_file():
            raise DecoderFilesError(
                f"{path.parent}: no config.json (a Hugging Face model directory)"
            )
        c = json.loads(path.read_text())
        kind = c.get("model_type")
        if kind not in MODEL_TYPES:
            raise DecoderFilesError(
                f"{path}: model_type {kind!r} is not supported; supported: {list(MODEL_TYPES)}"
            )
        rope = c.get("rope_parameters") or {}
        theta = c.get("rope_theta", rope.get("rope_theta", 10000.0))  # both layouts occur
        if rope.get("rope_type", "default") != "default":
            raise DecoderFilesError(
                f"{path}: rope_type {rope['rope_type']!r} is not supported (only 'default')"
            )
        heads = c["num_attention_heads"]
        return cls(
            model_type=kind,
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=c.get("max_position_embeddings", 2048),
            attention_bias=kind == "qwen2" or bool(c.get("attention_bias", False)),
            mlp_bias=bool(c.get("mlp_bias", False)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        )


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) on the ``targets`` projections: ``W x + (alpha /
    rank) B A x`` with A drawn small and B zero, so an adapted model starts as the base one.
    ``task_sets`` > 0 adds that many more adapter sets (one per task): the forward pass of
    task t adds its own set to the shared one. The base weights never receive gradients."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    task_sets: int = 0
    layers: int = 0  # adapt only the top this many layers (0: all); below them, no backward

    def __post_init__(self):
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or self.rank < 1 or self.layers < 0:
            raise ValueError(
                f"LoRA: rank must be >= 1 (got {self.rank}), layers >= 0 (got {self.layers}) "
                f"and targets among {LORA_TARGETS} (unknown: {unknown})"
            )

    def adapts_layer(self, index: int, num_layers: int) -> bool:
        """Whether layer ``index`` (0 = the bottom) of ``num_layers`` carries adapters."""
        return self.layers == 0 or index >= num_layers - self.layers


class Linear(nn.Module):
    """A Dense layer (a Hugging Face Linear) with optional LoRA adapters; with adapters, its
    own kernel and bias are frozen (gradients stopped)."""

    features: int
    use_bias: bool
    lora: LoRAConfig | None = None
    frozen: bool = False  # the base weights take no gradient (any layer of a LoRA model)
    # Logical names of the kernel's (input, output) axes, mapped to mesh axes by
    # ``mesh.axis_rules`` (mtl_jax/parallel.py): ("embed", "mlp_out") for the projections
    # out of the residual stream, ("mlp_out", "embed") for those back into it, so that
    # ``mlp_out -> model`` splits each layer Megatron-style.
    axes: tuple[str, str] = ("embed", "mlp_out")
    param_dtype: Any = jnp.float32  # the base weights' storage (adapters stay float32)
    precision: Any = None  # of the base matmul (BERT's parity needs HIGHEST)

    @nn.compact
    def __call__(self, x: jax.Array, task: int | None = None) -> jax.Array:
        part = nn.with_logical_partitioning
        shape = (x.shape[-1], self.features)
        kernel_init = part(nn.initializers.lecun_normal(), self.axes)
        kernel = self.param("kernel", kernel_init, shape, self.param_dtype)
        bias_init = part(nn.initializers.zeros, self.axes[1:])
        bias = (
            self.param("bias", bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        if self.frozen:
            kernel = jax.lax.stop_gradient(kernel)
            bias = None if bias is None else jax.lax.stop_gradient(bias)
        y = jnp.matmul(x, kernel.astype(x.dtype), precision=self.precision)
        if bias is not None:
            y = y + bias.astype(x.dtype)
        if self.lora is None:
            return y
        r, scale = self.lora.rank, self.lora.alpha / self.lora.rank
        a_init = nn.initializers.normal(stddev=1.0 / r)
        a = self.param("lora_a", part(a_init, (self.axes[0], None)), (x.shape[-1], r))
        b = self.param(
            "lora_b", part(nn.initializers.zeros, (None, self.axes[1])), (r, self.features)
        )
        y = y + scale * (x.astype(jnp.float32) @ a @ b).astype(y.dtype)
        if self.lora.task_sets and task is not None:
            sets = self.lora.task_sets
            ta_init = part(a_init, (None, self.axes[0], None))
            tb_init = part(nn.initializers.zeros, (None, None, self.axes[1]))
            ta = self.param("lora_task_a", ta_init, (sets, x.shape[-1], r))
            tb = self.param("lora_task_b", tb_init, (sets, r, self.features))
            y = y + scale * (x.astype(jnp.float32) @ ta[task] @ tb[task]).astype(y.dtype)
        return y


class RMSNorm(nn.Module):
    eps: float
    frozen: bool = False  # under LoRA: the base model's weights take no gradient
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        if self.frozen:
            weight = jax.lax.stop_gradient(weight)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (weight * normed).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin, (B, L, head_dim), in the half-split layout Hugging Face uses."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], -1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (B, L, H, D) rotated by position: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)  # as the original: in x's precision
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _linear(
    features: int,
    name: str,
    bias: bool,
    lora: LoRAConfig | None,
    adapted: bool = True,
    param_dtype: Any = jnp.float32,
) -> Linear:
    """A projection of a LoRA model (frozen, adapted where ``lora`` targets it and the
    layer is ``adapted``) or of a plain one."""
    with_adapter = lora is not None and adapted and name in lora.targets
    axes = ("mlp_out", "embed") if name in ("o_proj", "down_proj") else ("embed", "mlp_out")
    return Linear(
        features,
        bias,
        lora if with_adapter else None,
        lora is not None,
        axes,
        param_dtype,
        name=name,
    )


class Attention(nn.Module):
    config: DecoderConfig
    lora: LoRAConfig | None = None
    adapted: bool = True  # this layer carries adapters (LoRAConfig.layers)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, task=None) -> jax.Array:
        c = self.config
        b, length, _ = x.shape

        def dense(n, name, bias):
            layer = _linear(n, name, bias, self.lora, self.adapted, self.param_dtype)
            return lambda h: layer(h, task)

        q = dense(c.num_attention_heads * c.head_dim, "q_proj", c.attention_bias)(x)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj", c.attention_bias)(x)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj", c.attention_bias)(x)
        q = apply_rope(q.reshape(b, length, c.num_attention_heads, c.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, length, c.num_key_value_heads, c.head_dim), cos, sin)
        v = v.reshape(b, length, c.num_key_value_heads, c.head_dim)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # K/V heads shared by groups
        return dense(c.hidden_size, "o_proj", False)(out.reshape(b, length, -1))


class MLP(nn.Module):
    config: DecoderConfig
    lora: LoRAConfig | None = None
    adapted: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, task: int | None = None) -> jax.Array:
        c = self.config

        def dense(n, name):
            layer = _linear(n, name, c.mlp_bias, self.lora, self.adapted, self.param_dtype)
            return lambda h: layer(h, task)

        gate = dense(c.intermediate_size, "gate_proj")(x)
        up = dense(c.intermediate_size, "up_proj")(x)
        return dense(c.hidden_size, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: DecoderConfig
    lora: LoRAConfig | None = None
    adapted: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, task=None):
        c, frozen, dtype = self.config, self.lora is not None, self.param_dtype
        attention = Attention(c, self.lora, self.adapted, dtype, name="self_attn")
        x = x + attention(
            RMSNorm(c.rms_norm_eps, frozen, dtype, name="input_layernorm")(x), cos, sin, mask, task
        )
        normed = RMSNorm(c.rms_norm_eps, frozen, dtype, name="post_attention_layernorm")(x)
        return x + MLP(c, self.lora, self.adapted, dtype, name="mlp")(normed, task)


class DecoderLM(nn.Module):
    """Hidden states after the final norm, (B, L, hidden); ``logits`` adds the LM head.
    With ``lora``, only the adapters take gradients; ``task`` (an int) picks the task's
    own adapter set, added to the shared one. ``dtype`` (e.g. bfloat16) is the base
    weights' storage and the activations' type; adapters and norms' statistics stay float32.
    """

    config: DecoderConfig
    lora: LoRAConfig | None = None
    dtype: Any = jnp.float32
    # Rematerialise each layer in the backward pass (jax.checkpoint): its activations are
    # recomputed instead of kept, trading about a third more compute for memory.
    remat: bool = False

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, logits: bool = False, task=None
    ):
        c = self.config
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        embed = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=init,
            dtype=self.dtype,
            param_dtype=self.dtype,
            name="embed_tokens",
        )
        x = embed(input_ids)
        if self.lora is not None:
            x = jax.lax.stop_gradient(x)
        length = input_ids.shape[1]
        positions = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None, None] & (attention_mask[:, None, None, :] > 0)
        layers = c.num_hidden_layers
        # (self, x, cos, sin, mask, task): the task index picks adapters, so it is static.
        layer_type = nn.remat(DecoderLayer, static_argnums=(5,)) if self.remat else DecoderLayer
        for i in range(layers):
            adapted = self.lora is None or self.lora.adapts_layer(i, layers)
            layer = layer_type(c, self.lora, adapted, self.dtype, name=f"layers_{i}")
            x = layer(x, cos, sin, mask, task)
        hidden = RMSNorm(c.rms_norm_eps, self.lora is not None, self.dtype, name="norm")(x)
        if not logits:
            return hidden
        if c.tie_word_embeddings:
            return hidden, embed.attend(hidden)
        head_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab"))
        lm_head = nn.Dense(c.vocab_size, use_bias=False, kernel_init=head_init, name="lm_head")
        return hidden, lm_head(hidden)


def _safetensors_files(directory: pathlib.Path) -> list[pathlib.Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise DecoderFilesError(
                f"{directory}: shards {missing} named by {index.name} are missing"
            )
        return [directory / s for s in shards]
    raise DecoderFilesError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def load_params(
    directory: str | pathlib.Path, config: DecoderConfig, dtype: Any = np.float32
) -> dict:
    """Flax parameters of ``DecoderLM`` from the Hugging Face weights (Linear weights
    transposed into Dense kernels)."""
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    weights: dict[str, np.ndarray] = {}
    for path in _safetensors_files(directory):
        weights.update(load_file(str(path)))

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise DecoderFilesError(f"{directory}: the weights lack {name!r}")
        return weights.pop(name).astype(dtype)

    def linear(prefix: str, bias: bool) -> dict:
        out = {"kernel": take(f"{prefix}.weight").T}
        if bias:
            out["bias"] = take(f"{prefix}.bias")
        return out

    c = config
    embedding = take("model.embed_tokens.weight")
    if embedding.shape != (c.vocab_size, c.hidden_size):
        raise DecoderFilesError(
            f"{directory}: embed_tokens is {embedding.shape}, config.json says "
            f"({c.vocab_size}, {c.hidden_size})"
        )
    params: dict[str, Any] = {"embed_tokens": {"embedding": embedding}}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        params[f"layers_{i}"] = {
            "input_layernorm": {"weight": take(f"{p}.input_layernorm.weight")},
            "post_attention_layernorm": {"weight": take(f"{p}.post_attention_layernorm.weight")},
            "self_attn": {
                name: linear(f"{p}.self_attn.{name}", c.attention_bias and name != "o_proj")
                for name in ("q_proj", "k_proj", "v_proj", "o_proj")
            },
            "mlp": {
                name: linear(f"{p}.mlp.{name}", c.mlp_bias)
                for name in ("gate_proj", "up_proj", "down_proj")
            },
        }
    params["norm"] = {"weight": take("model.norm.weight")}
    if not c.tie_word_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight").T}
    return params


def decoder_hidden_states(
    model_dir: str | pathlib.Path, input_ids: np.ndarray, attention_mask: np.ndarray
) -> np.ndarray:
    """(B, L, D) float32 hidden states after the final norm of the decoder in
    ``model_dir`` for right-padded ``input_ids`` (B, L)."""
    directory = pathlib.Path(model_dir)
    config = DecoderConfig.from_json(directory / "config.json")
    params = load_params(directory, config)
    ids = np.asarray(input_ids)
    if ids.max(initial=0) >= config.vocab_size or ids.min(initial=0) < 0:
        raise ValueError(f"input_ids must lie in [0, {config.vocab_size}) for this model")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"{ids.shape[1]} tokens exceed the model's {config.max_position_embeddings} positions"
        )
    model = DecoderLM(config)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(attention_mask))
    return np.asarray(out, np.float32)
