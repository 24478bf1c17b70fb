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
from mtl_jax.models.lm_trunk import LanguageModelTrunk
from mtl_jax.models.trunks import make_trunk
from mtl_jax.tasks import TaskSpec
from mtl_jax.text.prompts import PROMPT, PROMPT_LENGTH


def esmm_tasks(model_config: Any) -> tuple[str, str]:
    """``(ctr task, ctcvr task)`` when ESMM is on, else ``("", "")``."""
    return model_config.get("esmm_ctr_task", ""), model_config.get("esmm_ctcvr_task", "")


def product_logit(logit_a: jax.Array, logit_b: jax.Array) -> jax.Array:
    """The logit of ``sigmoid(a) * sigmoid(b)``, computed in log space so that neither tiny
    nor near-one probabilities lose precision."""
    log_p = jax.nn.log_sigmoid(logit_a) + jax.nn.log_sigmoid(logit_b)
    log_p = jnp.minimum(log_p, -1e-7)  # p < 1 strictly, so log(1 - p) is finite
    return log_p - jnp.log(-jnp.expm1(log_p))


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

    Top-level submodules are the parameter groups: ``embedding``, ``trunk`` and one
    ``towers_<task>`` per task. ``embed`` and ``from_embedded`` split the forward pass at the
    embedding output, so a trainer can take per-task gradients of the trunk without ever
    forming per-task gradients of the (large) embedding tables.
    """

    features: Sequence[FeatureSpec]
    tasks: Sequence[TaskSpec]
    config: Any  # the config's ``model`` section
    output_biases: Sequence[Sequence[float]] | None = None  # per task, see Tower
    text_features: Sequence[tuple[str, int]] = ()  # see FeatureEmbedding
    text_dim: int = 384
    text_encoder: Any = None  # a BertConfig in fine-tune mode, see FeatureEmbedding
    text_token_length: int = 0
    text_trainable_layers: int = 0
    lookup_rows: Sequence[tuple[str, int]] = ()  # see FeatureEmbedding
    # model.trunk="llm": the LM trunk's spec (models/lm_trunk.py); the embedded input is
    # then a dict of the prompt's tokens and lengths, and the id embeddings, if any.
    language_model: Any = None

    def setup(self):
        c = self.config
        self.embedding = FeatureEmbedding(
            self.features,
            c.embed_dim,
            c.pairwise_dots,
            text_features=tuple(self.text_features),
            text_dim=self.text_dim,
            text_encoder=self.text_encoder,
            text_token_length=self.text_token_length,
            text_trainable_layers=self.text_trainable_layers,
            id_dropout=c.get("id_dropout", 0.0),
            id_dropout_features=tuple(c.get("id_dropout_features", ())),
            lookup_rows=tuple(self.lookup_rows),
            table_dtype=jnp.dtype(c.get("embedding_dtype", "float32")),
        )
        if c.trunk == "llm":
            if self.language_model is None:
                raise ValueError("model.trunk='llm' needs the model's language_model spec")
            self.trunk = LanguageModelTrunk(
                len(self.tasks), self.language_model, tuple(c.trunk_hidden), c.dropout
            )
        else:
            self.trunk = make_trunk(c.trunk, len(self.tasks), c)
        self.towers = {
            task.name: Tower(
                task.output_dim,
                tuple(c.tower_hidden),
                c.dropout,
                None if self.output_biases is None else self.output_biases[i],
            )
            for i, task in enumerate(self.tasks)
        }

    def embed(self, features: dict[str, jax.Array], *, train: bool = False) -> Any:
        if self.language_model is None:
            return self.embedding(features, train=train)
        for column in (PROMPT, PROMPT_LENGTH):
            if column not in features:
                raise KeyError(
                    f"batch lacks {column!r}, which model.trunk='llm' reads; build the "
                    "dataset with trainer.load_run_dataset (it adds the prompts)"
                )
        x = {"tokens": features[PROMPT], "lengths": features[PROMPT_LENGTH]}
        if self.features or self.text_features:
            x["ids"] = self.embedding(features, train=train)
        return x

    def represent(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        """The trunk's output: the representation each task's tower reads, T arrays (B, H)."""
        return self.trunk(x, train=train)

    def heads(self, reps: Sequence[jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
        """Task logits from the trunk's representations (the towers, and ESMM's product)."""
        logits = {
            task.name: self.towers[task.name](rep, train=train)
            for task, rep in zip(self.tasks, reps, strict=True)
        }
        ctr, ctcvr = esmm_tasks(self.config)
        if ctr:
            # ESMM: the conversion tower predicts pCVR = P(convert | click), never supervised
            # directly; the task's output is pCTCVR = pCTR * pCVR over every impression.
            self.sow("intermediates", "cvr_logit", logits[ctcvr])
            logits[ctcvr] = product_logit(logits[ctr], logits[ctcvr])
        return logits

    def from_embedded(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        return self.heads(self.represent(x, train=train), train=train)

    def __call__(self, features: dict[str, jax.Array], *, train: bool = False):
        return self.from_embedded(self.embed(features, train=train), train=train)
