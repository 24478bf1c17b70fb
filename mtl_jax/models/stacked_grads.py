"""Every task's MMoE trunk gradient in one backward pass with a task axis (``stacked``).

Exact whole-trunk gradient methods need each task's gradient of the trunk parameters. A
``vmap`` of the trunk's vjp over T one-hot cotangents (``balancing.task_gradients=batched``)
pays for structure it cannot see: task t's cotangent reaches only task t's mixture, yet the
mixing and gating backward runs for every gate in every task's pass. Written by hand with
a task axis next to the example axis, (B, T, H) in each expert's layers, the backward needs
only each task's own gate, and every expert layer's weight gradient for all T tasks is one
matmul per expert, h^T (B x T*H); the input gradient of a hidden layer is one (B*T x H) W^T
per expert. Same values as the vjp (tests/test_stacked_grads.py, tests/test_train.py); the
cost against ``batched`` and ``sequential`` is measured by experiments/bench_task_grads.py.

What it covers is what it computes by hand: the MMoE trunk (``trunks.MMoE``: ExpertMLPs with
a shared input, one softmax gate per task) without dropout. ``mmoe_forward`` is that trunk's
forward in plain jnp, equal to the Flax module's; differentiating it with ``jax.vjp`` gives
the input's gradient, ``mmoe_task_grads`` the per-task parameter gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtl_jax.models import layers


def mmoe_forward(trunk: dict, x: jax.Array, num_tasks: int) -> tuple[list[jax.Array], dict]:
    """The MMoE trunk's task representations (T arrays (B, H)) and what the backward reuses:
    every expert's layer inputs and pre-activations (lists over experts of (B, width)), as
    ``layers.ExpertMLPs`` computes them (one chain of plain matmuls per expert), and the
    gates (B, T, E)."""
    experts, gate = trunk["experts"], trunk["gates"]
    batch, num_experts = x.shape[0], experts["kernel_0"].shape[0]
    inputs, pre, top = [], [], []
    for e in range(num_experts):
        h, inputs_e, pre_e = x, [], []
        for i in range(_num_layers(experts)):
            inputs_e.append(h)
            pre_e.append(h @ experts[f"kernel_{i}"][e] + experts[f"bias_{i}"][e])
            h = jax.nn.relu(pre_e[-1])
        inputs.append(inputs_e)
        pre.append(pre_e)
        top.append(h)
    logits = x @ gate["kernel"] + gate["bias"]
    gates = jax.nn.softmax(logits.reshape(batch, num_tasks, num_experts), axis=-1)
    mixed = [layers.mix(gates[:, t], top) for t in range(num_tasks)]
    cache = {"inputs": inputs, "pre": pre, "top": top, "gates": gates}
    return mixed, cache


def mmoe_task_grads(
    trunk: dict, x: jax.Array, cache: dict, cotangents: jax.Array
) -> tuple[Any, dict]:
    """Each task's trunk gradient (the trunk's tree, leaves with a leading task axis) for
    ``cotangents`` (B, T, H): task t's cotangent on its own representation only; and the
    per-task cotangents where the trunk reads its input (``mmoe_input_grad``'s argument).

    Expert by expert, the cotangents keep the layout (B, T, width) from the top layer down,
    so every matmul reads its operands as they lie: (B, T * W) for the weight gradients of
    all tasks at once and (B * T, W) for the input's, with no transposes between layers."""
    experts = trunk["experts"]
    batch, num_tasks = cotangents.shape[:2]
    num_experts = experts["kernel_0"].shape[0]
    gates = cache["gates"]
    # rep_t = sum_e gates[b, t, e] h_e[b]: task t's pass touches gate t and every expert.
    d_gates = jnp.stack([jnp.sum(cotangents * h[:, None], axis=-1) for h in cache["top"]], -1)
    d_logits = gates * (d_gates - jnp.sum(d_gates * gates, axis=-1, keepdims=True))
    eye = jnp.eye(num_tasks, dtype=x.dtype)  # task t's gradient lives in gate t's columns
    gate_grads = {
        "kernel": jnp.einsum("bd,bte,ts->tdse", x, d_logits, eye).reshape(
            num_tasks, x.shape[1], -1
        ),
        "bias": jnp.einsum("te,ts->tse", d_logits.sum(0), eye).reshape(num_tasks, -1),
    }
    per_expert, first_layer = [], []  # per expert: {name: (T, ...)}, (B, T, width_0)
    for e in range(num_experts):
        grads = {}
        d_h = cotangents * gates[:, :, e, None]  # (B, T, W)
        for i in reversed(range(_num_layers(experts))):
            d_z = d_h * (cache["pre"][e][i] > 0)[:, None]
            grads[f"bias_{i}"] = d_z.sum(0)
            kernel, h_in = experts[f"kernel_{i}"][e], cache["inputs"][e][i]
            width = kernel.shape[-1]
            d_k = h_in.T @ d_z.reshape(batch, num_tasks * width)  # (D, T * W)
            grads[f"kernel_{i}"] = d_k.reshape(-1, num_tasks, width).transpose(1, 0, 2)
            if i == 0:
                first_layer.append(d_z)
                break  # below is the input, whose gradient is no trunk parameter's
            d_h = (d_z.reshape(batch * num_tasks, width) @ kernel.T).reshape(batch, num_tasks, -1)
        per_expert.append(grads)
    expert_grads = {
        name: jnp.stack([g[name] for g in per_expert], axis=1) for name in per_expert[0]
    }
    below = {"first_layer": first_layer, "gate_logits": d_logits}
    return {"experts": expert_grads, "gates": gate_grads}, below


def mmoe_input_grad(trunk: dict, below: dict, task_weights: jax.Array) -> jax.Array:
    """The gradient at the trunk's input (B, D) of the task losses weighted by
    ``task_weights`` (T,), from ``mmoe_task_grads``' per-task cotangents: the weighted sum
    over tasks where the trunk reads its input, then one matmul per expert and one for the
    gates. The backward above the first layer is not run again."""
    experts, gate = trunk["experts"], trunk["gates"]
    num_tasks = task_weights.shape[0]
    weighted = [
        sum(task_weights[t] * d_z[:, t] for t in range(num_tasks)) for d_z in below["first_layer"]
    ]
    x_grad = sum(d_z @ experts["kernel_0"][e].T for e, d_z in enumerate(weighted))
    d_logits = below["gate_logits"] * task_weights[None, :, None]  # gate t: task t only
    return x_grad + d_logits.reshape(d_logits.shape[0], -1) @ gate["kernel"].T


def resolve_task_gradients(
    model_config: Any, requested: str, gramian_params: str, language_model: bool
) -> str:
    """The per-task gradient mode a train step runs for ``balancing.task_gradients=requested``
    (one rule for the step and for the ablation tables' pass counts). An LM trunk always
    takes T sequential backward passes: batched (a vmap over the T cotangents of one vjp)
    gives wrong LoRA ``lora_b`` gradients for every task but the first on it (measured
    against per-task ``jax.grad``; tests/test_lm_trunk.py), and T passes hold less memory at
    LM size. ``"auto"`` takes this module's pass where it applies (MMoE without dropout or
    ESMM, the whole trunk's Gramian), the fastest form there on 2 CPU cores, and
    ``"batched"`` elsewhere (as fast as T sequential passes for PLE, faster for
    Shared-Bottom; profile.md, finding 6)."""
    if language_model:
        return "sequential"
    if requested == "auto":
        return "batched" if stacked_problem(model_config, gramian_params) else "stacked"
    return requested


def stacked_problem(model_config: Any, gramian_params: str) -> str | None:
    """Why ``balancing.task_gradients='stacked'`` cannot run with this model, or None."""
    c = model_config
    if c.trunk != "mmoe":
        return f"is written for model.trunk='mmoe', not {c.trunk!r}; use 'batched' or 'sequential'"
    if c.dropout > 0:
        return f"computes the trunk without dropout; model.dropout is {c.dropout}"
    if c.get("esmm_ctr_task", ""):
        return "needs towers that read one representation each; ESMM's CTCVR reads two"
    if gramian_params:
        return "is for the whole trunk's Gramian; balancing.gramian_params selects a part of it"
    return None


def _num_layers(experts: dict) -> int:
    return sum(1 for name in experts if name.startswith("kernel_"))
