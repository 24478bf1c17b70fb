"""Shared trunks: map the embedded input to one representation per task.

Every trunk returns a list of T arrays (B, H), one per task, so heads never need to know
how sharing was done. Gated trunks sow their softmax gate weights as
``intermediates/.../gate_weights`` (B, G, E) so training can log gate entropy and expert
utilisation (a collapsed gate is a common silent failure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models.layers import MLP, ExpertMLPs, mix


def _softmax_gates(dense: nn.Dense, x_bd: jax.Array, num_gates: int) -> jax.Array:
    """``num_gates`` softmax gates from one Dense with G * E outputs: (B, G, E)."""
    logits = dense(x_bd)
    return jax.nn.softmax(logits.reshape(x_bd.shape[0], num_gates, -1), axis=-1)


class SharedBottom(nn.Module):
    """One MLP shared by all tasks (Caruana 1997)."""

    num_tasks: int
    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        h = MLP(self.hidden, self.dropout, name="bottom")(x, train=train)
        return [h] * self.num_tasks


class SingleTask(nn.Module):
    """No sharing in the trunk: an independent MLP column per task.

    The baseline that delta-m% is measured against; only the feature embeddings are shared
    (train one model per task, ``config.tasks=(task,)``, to share nothing at all).
    """

    num_tasks: int
    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        return ExpertMLPs(self.num_tasks, self.hidden, self.dropout, as_list=True, name="columns")(
            x, train=train
        )


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    Experts are shared; each task has its own softmax gate over them, so tasks that disagree
    can draw on different experts. Gate weights are sown as ``gate_weights`` (B, G, E).
    """

    num_tasks: int
    num_experts: int
    hidden: Sequence[int]
    dropout: float = 0.0
    one_gate: ClassVar[bool] = False  # OMoE: one gate that every task shares

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        experts = ExpertMLPs(
            self.num_experts, self.hidden, self.dropout, as_list=True, name="experts"
        )(x, train=train)
        # All G gates as one Dense with G * E outputs: (B, G, E) softmax weights.
        num_gates = 1 if self.one_gate else self.num_tasks
        dense = nn.Dense(num_gates * self.num_experts, name="gate" if self.one_gate else "gates")
        gates_bge = _softmax_gates(dense, x, num_gates)
        self.sow("intermediates", "gate_weights", gates_bge)
        mixed = [mix(gates_bge[:, g], experts) for g in range(num_gates)]
        return [mixed[0 if self.one_gate else t] for t in range(self.num_tasks)]


class OMoE(MMoE):
    """One-gate mixture of experts (the MMoE paper's OMoE baseline): every task reads the
    same gated mixture of experts."""

    one_gate: ClassVar[bool] = True


class CGCLevel(nn.Module):
    """Customized gate control (Tang et al., RecSys 2020): each task has ``num_task_experts``
    experts of its own plus ``num_shared_experts`` experts shared by all; task t's gate mixes
    its own and the shared experts only. With ``shared_output`` (PLE's lower levels) a shared
    gate over all experts also produces the shared input of the next level.

    Input: the T task representations (a sequence of (B, D)), or None where every task reads
    the shared one (PLE's first level), and the shared one (B, D). Output: the T task
    representations (a list of (B, H)) and, with ``shared_output``, the shared one (B, H).
    Arrays stay per task and per expert, as in MMoE: plain matmuls and elementwise mixtures,
    no per-example batched matmuls of tiny gate matrices (profile.md, finding 6).
    """

    num_tasks: int
    num_task_experts: int
    num_shared_experts: int
    hidden: Sequence[int]
    dropout: float = 0.0
    shared_output: bool = False

    @nn.compact
    def __call__(
        self,
        task_inputs: Sequence[jax.Array] | None,
        shared_bd: jax.Array,
        *,
        train: bool = False,
    ) -> tuple[list[jax.Array], jax.Array | None]:
        t, k, s = self.num_tasks, self.num_task_experts, self.num_shared_experts
        if task_inputs is not None and len(task_inputs) != t:
            raise ValueError(f"{len(task_inputs)} task inputs for {t} tasks")
        # Task t's k experts read task t's input, the s shared experts the shared one.
        expert_inputs = (
            shared_bd
            if task_inputs is None
            else [h for h in task_inputs for _ in range(k)] + [shared_bd] * s
        )
        experts = ExpertMLPs(t * k + s, self.hidden, self.dropout, as_list=True, name="experts")(
            expert_inputs, train=train
        )
        shared_experts = experts[t * k :]

        # Task t's gate reads task t's input and mixes its own k experts and the shared ones.
        gate_inputs = [shared_bd] * t if task_inputs is None else list(task_inputs)
        kernel = self.param(
            "task_gates_kernel",
            nn.initializers.lecun_normal(batch_axis=(0,)),
            (t, shared_bd.shape[-1] if task_inputs is None else task_inputs[0].shape[-1], k + s),
        )
        bias = self.param("task_gates_bias", nn.initializers.zeros, (t, k + s))
        gates = [jax.nn.softmax(h @ kernel[i] + bias[i], -1) for i, h in enumerate(gate_inputs)]
        self.sow("intermediates", "gate_weights", jnp.stack(gates, axis=1))
        task_out = [
            mix(g, experts[i * k : (i + 1) * k] + shared_experts) for i, g in enumerate(gates)
        ]
        if not self.shared_output:
            return task_out, None
        shared_gate_b1e = _softmax_gates(nn.Dense(t * k + s, name="shared_gate"), shared_bd, 1)
        self.sow("intermediates", "shared_gate_weights", shared_gate_b1e)
        shared_out = mix(shared_gate_b1e[:, 0], experts)
        return task_out, shared_out


class PLE(nn.Module):
    """Progressive layered extraction (Tang et al., RecSys 2020): ``num_levels`` stacked CGC
    levels; ``num_levels=1`` is CGC. Lower levels pass a shared representation upward."""

    num_tasks: int
    num_task_experts: int
    num_shared_experts: int
    num_levels: int
    hidden: Sequence[int]
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        task_inputs, shared_bd = None, x  # the first level's tasks all read x
        for level in range(self.num_levels):
            task_inputs, shared_bd = CGCLevel(
                self.num_tasks,
                self.num_task_experts,
                self.num_shared_experts,
                self.hidden,
                self.dropout,
                shared_output=level < self.num_levels - 1,
                name=f"level_{level}",
            )(task_inputs, shared_bd, train=train)
        return task_inputs


class CrossStitch(nn.Module):
    """Cross-stitch networks (Misra et al., CVPR 2016): one MLP column per task, and after
    every layer a learned T x T unit mixes the columns, ``h_t <- sum_s alpha_ts h_s``.

    ``self_weight`` initialises alpha to ``self_weight`` on the diagonal and shares the rest
    evenly off it (the paper's 0.9 / 0.1); 1.0 starts as independent columns.
    """

    num_tasks: int
    hidden: Sequence[int]
    dropout: float = 0.0
    self_weight: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        t = self.num_tasks
        off = (1.0 - self.self_weight) / max(t - 1, 1)
        alpha_init = off * jnp.ones((t, t)) + (self.self_weight - off) * jnp.eye(t)
        h = x  # every column reads x first
        for i, width in enumerate(self.hidden):
            columns = ExpertMLPs(t, (width,), self.dropout, as_list=True, name=f"columns_{i}")
            h = columns(h, train=train)
            alpha = self.param(f"stitch_{i}", lambda *_, a=alpha_init: a)
            h = [sum(alpha[k, j] * h_j for j, h_j in enumerate(h)) for k in range(t)]
        return [h] * t if not self.hidden else h


TRUNKS = ("shared_bottom", "single_task", "omoe", "mmoe", "cgc", "ple", "cross_stitch")


def make_trunk(name: str, num_tasks: int, model_config) -> nn.Module:
    c = model_config
    hidden = tuple(c.trunk_hidden)
    if name == "shared_bottom":
        return SharedBottom(num_tasks, hidden, c.dropout)
    if name == "single_task":
        return SingleTask(num_tasks, hidden, c.dropout)
    if name == "omoe":
        return OMoE(num_tasks, c.num_experts, hidden, c.dropout)
    if name == "mmoe":
        return MMoE(num_tasks, c.num_experts, hidden, c.dropout)
    if name in ("cgc", "ple"):
        levels = 1 if name == "cgc" else c.num_levels
        return PLE(num_tasks, c.num_task_experts, c.num_shared_experts, levels, hidden, c.dropout)
    if name == "cross_stitch":
        return CrossStitch(num_tasks, hidden, c.dropout, c.cross_stitch_self_weight)
    raise ValueError(f"unknown trunk {name!r}; valid: {TRUNKS}")
