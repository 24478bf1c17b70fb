"""Each trunk's defining structure, checked against plain per-expert / per-column references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.models import PLE, CGCLevel, CrossStitch, MMoE, OMoE, SharedBottom, SingleTask
from mtl_jax.models.layers import MLP, ExpertMLPs

X = jax.random.normal(jax.random.PRNGKey(0), (5, 6))


def _init(module, *args):
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), *args)["params"])
    return params, module.apply({"params": params}, *args)


def _expert(params, e, x, layers):
    """Expert ``e`` of an ExpertMLPs param dict, run as an ordinary MLP."""
    mlp = {
        f"dense_{i}": {"kernel": params[f"kernel_{i}"][e], "bias": params[f"bias_{i}"][e]}
        for i in range(layers)
    }
    return np.asarray(MLP([params[f"bias_{i}"].shape[-1] for i in range(layers)]).apply(
        {"params": mlp}, x
    ))  # fmt: skip


def _softmax(z):
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_expert_mlps_shared_and_per_expert_inputs_are_each_experts_own_mlp():
    """The shared-input matmul and the expert-major per-expert path both equal E plain MLPs."""
    experts = ExpertMLPs(4, (7, 3))
    params, shared_out = _init(experts, X)
    per_expert_in = jax.random.normal(jax.random.PRNGKey(3), (5, 4, 6))
    per_expert_out = experts.apply({"params": params}, per_expert_in)
    broadcast_out = experts.apply({"params": params}, jnp.stack([X] * 4, 1))
    assert shared_out.shape == per_expert_out.shape == (5, 4, 3)
    for e in range(4):
        want = _expert(params, e, X, 2)
        np.testing.assert_allclose(shared_out[:, e], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(broadcast_out[:, e], want, rtol=1e-5, atol=1e-6)
        own = _expert(params, e, per_expert_in[:, e], 2)
        np.testing.assert_allclose(per_expert_out[:, e], own, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(5, 3, 6\).*4 experts"):
        experts.apply({"params": params}, per_expert_in[:, :3])
    # A list of per-expert inputs runs the same experts, one plain chain each.
    listed = ExpertMLPs(4, (7, 3), as_list=True).apply(
        {"params": params}, [per_expert_in[:, e] for e in range(4)]
    )
    for e in range(4):
        np.testing.assert_allclose(listed[e], per_expert_out[:, e], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 per-expert inputs for 4 experts"):
        experts.apply({"params": params}, [X] * 3)


def test_omoe_one_expert_is_shared_bottom_and_tasks_share_one_mixture():
    params, outs = _init(OMoE(num_tasks=3, num_experts=1, hidden=(8, 4)), X)
    bottom = {"bottom": {f"dense_{i}": {"kernel": params["experts"][f"kernel_{i}"][0],
                                        "bias": params["experts"][f"bias_{i}"][0]}
                         for i in range(2)}}  # fmt: skip
    ref = SharedBottom(3, (8, 4)).apply({"params": bottom}, X)
    for got, want in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    params, outs = _init(OMoE(num_tasks=3, num_experts=4, hidden=(8,)), X)
    gate = _softmax(np.asarray(X @ params["gate"]["kernel"] + params["gate"]["bias"]))
    experts = np.stack([_expert(params["experts"], e, X, 1) for e in range(4)], 1)
    want = np.einsum("be,beh->bh", gate, experts)
    for got in outs:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mmoe_with_uniform_gates_is_the_mean_of_its_experts():
    params, _ = _init(MMoE(num_tasks=2, num_experts=3, hidden=(8,)), X)
    params = jax.tree.map(lambda p: p, params)
    params["gates"] = jax.tree.map(jnp.zeros_like, params["gates"])
    outs = MMoE(num_tasks=2, num_experts=3, hidden=(8,)).apply({"params": params}, X)
    mean = np.mean([_expert(params["experts"], e, X, 1) for e in range(3)], axis=0)
    for got in outs:
        np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)


def _cgc_reference(params, task_in, shared_in, t, k, s, shared_output):
    """CGC by hand: every expert as its own MLP, every gate as its own softmax."""
    experts = [_expert(params["experts"], i * k + j, task_in[:, i], 1) for i in range(t)
               for j in range(k)] + [_expert(params["experts"], t * k + j, shared_in, 1)
                                     for j in range(s)]  # fmt: skip
    outs = []
    for i in range(t):
        w = _softmax(task_in[:, i] @ params["task_gates_kernel"][i] + params["task_gates_bias"][i])
        mine = experts[i * k : (i + 1) * k] + experts[t * k :]
        outs.append(sum(w[:, [j]] * e for j, e in enumerate(mine)))
    shared = None
    if shared_output:
        g = params["shared_gate"]
        w = _softmax(shared_in @ g["kernel"] + g["bias"])
        shared = sum(w[:, [j]] * e for j, e in enumerate(experts))
    return np.stack(outs, 1), shared


@pytest.mark.parametrize("k, s, shared_output", [(1, 2, False), (2, 1, True), (2, 0, True)])
def test_cgc_level_matches_per_expert_reference(k, s, shared_output):
    t = 3
    task_in = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, t, 6)))
    level = CGCLevel(t, k, s, (7,), shared_output=shared_output)
    task_inputs = [task_in[:, i] for i in range(t)]
    params, (task_out, shared_out) = _init(level, task_inputs, np.asarray(X))
    want_task, want_shared = _cgc_reference(params, task_in, np.asarray(X), t, k, s, shared_output)
    np.testing.assert_allclose(np.stack(task_out, 1), want_task, rtol=1e-5, atol=1e-6)
    if shared_output:
        np.testing.assert_allclose(shared_out, want_shared, rtol=1e-5, atol=1e-6)
    else:
        assert shared_out is None
    with pytest.raises(ValueError, match="2 task inputs for 3 tasks"):
        level.apply({"params": params}, task_inputs[:2], np.asarray(X))


def test_cgc_without_shared_experts_gives_independent_columns():
    """One task expert each and no shared expert: task t's output is its own expert's."""
    params, outs = _init(PLE(3, 1, 0, 1, (8,)), X)
    experts = params["level_0"]["experts"]
    for t in range(3):
        np.testing.assert_allclose(outs[t], _expert(experts, t, X, 1), rtol=1e-5, atol=1e-6)


def test_ple_feeds_each_level_the_previous_levels_outputs():
    t, k, s = 2, 1, 2
    params, outs = _init(PLE(t, k, s, 2, (6,)), X)
    x = np.asarray(X)
    task0, shared0 = _cgc_reference(params["level_0"], np.stack([x] * t, 1), x, t, k, s, True)
    task1, _ = _cgc_reference(params["level_1"], task0, shared0, t, k, s, False)
    for i in range(t):
        np.testing.assert_allclose(outs[i], task1[:, i], rtol=1e-4, atol=1e-5)


def test_cross_stitch_identity_gives_independent_columns():
    params, outs = _init(CrossStitch(3, (8, 4), self_weight=1.0), X)
    np.testing.assert_allclose(params["stitch_0"], np.eye(3))

    def column(t):
        h = np.asarray(X)
        for i in range(2):
            h = _expert(params[f"columns_{i}"], t, h, 1)
        return h

    for t in range(3):
        np.testing.assert_allclose(outs[t], column(t), rtol=1e-5, atol=1e-6)
    # Perturbing column 1 leaves the others untouched.
    bumped = jax.tree.map(lambda p: p, params)
    bumped["columns_0"]["bias_0"] = params["columns_0"]["bias_0"].at[1].add(1.0)
    again = CrossStitch(3, (8, 4), self_weight=1.0).apply({"params": bumped}, X)
    np.testing.assert_allclose(again[0], outs[0])
    assert not np.allclose(again[1], outs[1])


def test_cross_stitch_units_mix_columns_layer_by_layer():
    params, outs = _init(CrossStitch(2, (5,), self_weight=0.9), X)
    np.testing.assert_allclose(params["stitch_0"], [[0.9, 0.1], [0.1, 0.9]], rtol=1e-6)
    cols = [_expert(params["columns_0"], t, np.asarray(X), 1) for t in range(2)]
    for t in range(2):
        np.testing.assert_allclose(outs[t], 0.9 * cols[t] + 0.1 * cols[1 - t], rtol=1e-5)


def test_single_task_columns_do_not_share_gradients():
    module = SingleTask(3, (6,))
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), X)["params"])
    grads = jax.grad(lambda p: module.apply({"params": p}, X)[2].sum())(params)
    kernel = np.asarray(grads["columns"]["kernel_0"])
    assert np.abs(kernel[2]).sum() > 0
    np.testing.assert_array_equal(kernel[:2], 0.0)


def test_gate_statistics_flag_a_collapsed_gate():
    from mtl_jax.models.gate_stats import gate_statistics, summarize

    module = MMoE(num_tasks=2, num_experts=4, hidden=(6,))
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), X)["params"])
    params["gates"]["kernel"] = jnp.zeros_like(params["gates"]["kernel"])
    bias = np.zeros(8, np.float32)
    bias[0] = 50.0  # task 0's gate: all weight on expert 0; task 1's gate: uniform
    params["gates"]["bias"] = jnp.asarray(bias)
    _, state = module.apply({"params": params}, X, mutable=["intermediates"])
    stats = gate_statistics(state["intermediates"])["gate_weights"]
    np.testing.assert_allclose(stats["entropy"], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(stats["usage"], [[1, 0, 0, 0], [0.25] * 4], atol=1e-5)
    record = summarize({"trunk/gate_weights": stats})
    assert record["gates/gate_weights/min_entropy"] == pytest.approx(0.0, abs=1e-5)
    assert record["gates/gate_weights/max_usage"] == pytest.approx(1.0, abs=1e-5)
