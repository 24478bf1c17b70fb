"""A language model as the shared trunk: the prompt's pooled hidden state is the
representation the task towers read.

The base weights (``trunk/lm/...``, every leaf not named ``lora_*``) are frozen: the train
step never differentiates them (mtl_jax/step.py ``split_frozen``). The shared LoRA adapters
and the ``neck`` (an MLP over the pooled state and, where configured, the id embeddings)
are the trunk every task shares, the parameters gradient-balancing methods combine task
gradients over. With per-task adapter sets, the LM runs once per task, each pass adding
the task's own set to the shared one; those sets are trained like towers (each by its own
task's loss only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.layers import MLP
from mtl_jax.text.bert import BertConfig, BertEncoder
from mtl_jax.text.decoder import DecoderLM, LoRAConfig

POOLINGS = ("last", "mean")


@dataclasses.dataclass(frozen=True)
class LMTrunkSpec:
    """What the trunk needs to know of its LM: the backbone's config, the adapters, the
    pooling and the base weights' dtype."""

    backbone: BertConfig | Any  # BertConfig or DecoderConfig
    lora: LoRAConfig
    pooling: str = "last"
    dtype: str = "float32"
    remat: bool = False  # decoders: recompute each layer's activations in the backward


def pool(hidden: jax.Array, lengths: jax.Array, how: str) -> jax.Array:
    """(B, L, D) hidden states of right-padded prompts -> (B, D): the last valid token's
    state, or the mean over the valid tokens."""
    if how == "last":
        return hidden[jnp.arange(hidden.shape[0]), jnp.maximum(lengths - 1, 0)]
    valid = (jnp.arange(hidden.shape[1])[None] < lengths[:, None]).astype(hidden.dtype)
    total = jnp.einsum("bld,bl->bd", hidden, valid)
    return total / jnp.maximum(valid.sum(-1, keepdims=True), 1.0)


class LanguageModelTrunk(nn.Module):
    """``x`` holds ``tokens`` (B, L) int, ``lengths`` (B,) and, optionally, ``ids`` (the
    id features' embeddings, (B, E)); returns T arrays (B, H)."""

    num_tasks: int
    spec: LMTrunkSpec
    hidden: tuple[int, ...]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: dict[str, jax.Array], *, train: bool = False) -> list[jax.Array]:
        s = self.spec
        dtype = jnp.dtype(s.dtype)
        tokens, lengths = x["tokens"], x["lengths"]
        mask = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
        if isinstance(s.backbone, BertConfig):
            lm = BertEncoder(s.backbone, lora=s.lora, name="lm")
            run = lambda task: lm(tokens, mask, task=task)
        else:
            lm = DecoderLM(s.backbone, s.lora, dtype, s.remat, name="lm")
            run = lambda task: lm(tokens, mask, task=task)
        neck = MLP(self.hidden, self.dropout, name="neck")
        passes = range(self.num_tasks) if s.lora.task_sets else (None,)
        reps = []
        for task in passes:
            pooled = pool(run(task), lengths, s.pooling).astype(jnp.float32)
            if "ids" in x:
                pooled = jnp.concatenate([pooled, x["ids"]], axis=-1)
            reps.append(neck(pooled, train=train))
        return reps if s.lora.task_sets else reps * self.num_tasks
