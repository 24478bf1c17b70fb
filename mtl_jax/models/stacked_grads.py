"""Every task's MMoE trunk gradient in one backward pass with a task axis (``stacked``).

Exact whole-trunk gradient methods need each task's gradient of the trunk parameters. A
``vmap`` of the trunk's vjp over T one-hot cotangents (``balancing.task_gradients=batched``)
pays for structure it cannot see: task t's cotangent reaches only task t's mixture, yet the
mixing and gating backward runs for every gate in every task's pass. Written by hand with
the task axis right after the example axis, (B, T, E, H), the backward needs only each task's
own gate, and every expert layer's weight gradient for all T tasks is one matmul, x^T (B x
T*E*H) for the shared input and, per expert, h^T (B x T*H) above it; the input gradient of a
hidden layer is one (B*T x H) W^T per expert. Same values as the vjp (tests/test_step.py);
the cost against ``batched`` and ``sequential`` is measured by experiments/bench_task_grads.py.

What it covers is what it computes by hand: the MMoE trunk (``trunks.MMoE``: ExpertMLPs with
a shared input, one softmax gate per task) without dropout. ``mmoe_forward`` is that trunk's
forward in plain jnp, equal to the Flax module's; differentiating it with ``jax.vjp`` gives
the input's gradient, ``mmoe_task_grads`` the per-task parameter gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def mmoe_forward(trunk: dict, x: jax.Array, num_tasks: int) -> tuple[list[jax.Array], dict]:
    """The MMoE trunk's task representations (T arrays (B, H)) and what the backward reuses:
    every expert layer's input and pre-activation (B, E, width), and the gates (B, T, E)."""
    experts, gate = trunk["experts"], trunk["gates"]
    batch, num_experts = x.shape[0], experts["kernel_0"].shape[0]
    inputs, pre = [], []
    h = x
    for i in range(_num_layers(experts)):
        kernel, bias = experts[f"kernel_{i}"], experts[f"bias_{i}"]
        inputs.append(h)
        if h.ndim == 2:  # the shared input: one (B, D) x (D, E * W) matmul
            z = h @ kernel.transpose(1, 0, 2).reshape(h.shape[1], -1)
            z = z.reshape(batch, num_experts, -1)
        else:
            z = jnp.einsum("bei,eio->beo", h, kernel)
        pre.append(z + bias)
        h = jax.nn.relu(pre[-1])
    logits = x @ gate["kernel"] + gate["bias"]
    gates = jax.nn.softmax(logits.reshape(batch, num_tasks, num_experts), axis=-1)
    mixed = jnp.einsum("bte,beh->bth", gates, h)
    cache = {"inputs": inputs, "pre": pre, "top": h, "gates": gates}
    return [mixed[:, t] for t in range(num_tasks)], cache


def mmoe_task_grads(trunk: dict, x: jax.Array, cache: dict, cotangents: jax.Array) -> Any:
    """Each task's trunk gradient (the trunk's tree, leaves with a leading task axis) for
    ``cotangents`` (B, T, H): task t's cotangent on its own representation only."""
    experts = trunk["experts"]
    batch, num_tasks = cotangents.shape[:2]
    num_experts = experts["kernel_0"].shape[0]
    gates = cache["gates"]
    # rep_t = sum_e gates[b, t, e] h[b, e]: task t's pass touches gate t and every expert.
    d_gates = jnp.einsum("bth,beh->bte", cotangents, cache["top"])
    d_logits = gates * (d_gates - jnp.sum(d_gates * gates, axis=-1, keepdims=True))
    eye = jnp.eye(num_tasks, dtype=x.dtype)  # task t's gradient lives in gate t's columns
    gate_grads = {
        "kernel": jnp.einsum("bd,bte,ts->tdse", x, d_logits, eye).reshape(
            num_tasks, x.shape[1], -1
        ),
        "bias": jnp.einsum("te,ts->tse", d_logits.sum(0), eye).reshape(num_tasks, -1),
    }
    expert_grads = {}
    d_h = jnp.einsum("bth,bte->bteh", cotangents, gates)  # (B, T, E, W)
    for i in reversed(range(_num_layers(experts))):
        d_z = d_h * (cache["pre"][i] > 0)[:, None]
        expert_grads[f"bias_{i}"] = d_z.sum(0)
        kernel, h_in = experts[f"kernel_{i}"], cache["inputs"][i]
        width = kernel.shape[-1]
        if h_in.ndim == 2:  # the shared input, one matmul for every task and expert
            d_k = h_in.T @ d_z.reshape(batch, -1)
            expert_grads[f"kernel_{i}"] = d_k.reshape(
                h_in.shape[1], num_tasks, num_experts, width
            ).transpose(1, 2, 0, 3)
            break  # below is the input, whose gradient is no trunk parameter's
        d_z_e = d_z.transpose(2, 0, 1, 3).reshape(num_experts, batch, num_tasks * width)
        d_k = jnp.einsum("ebi,ebn->ein", h_in.transpose(1, 0, 2), d_z_e)
        expert_grads[f"kernel_{i}"] = d_k.reshape(num_experts, -1, num_tasks, width).transpose(
            2, 0, 1, 3
        )
        d_h_e = jnp.einsum(
            "eno,eio->eni", d_z_e.reshape(num_experts, batch * num_tasks, width), kernel
        )
        d_h = d_h_e.reshape(num_experts, batch, num_tasks, -1).transpose(1, 2, 0, 3)
    return {"experts": expert_grads, "gates": gate_grads}


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
