"""The hand-written MMoE pass with a task axis against the Flax module and its vjp."""

import re
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mtl_jax import ablation
from mtl_jax.configlib import validate
from mtl_jax.data import load_dataset
from mtl_jax.errors import ConfigError
from mtl_jax.models import stacked_grads
from mtl_jax.models.trunks import MMoE
from mtl_jax.step import make_train_step, task_gradient_mode
from mtl_jax.train import Trainer
from tests.helpers import tiny_config

NUM_TASKS, NUM_EXPERTS, BATCH, DIM = 3, 4, 32, 10


@pytest.mark.parametrize("hidden", [(8,), (8, 6, 5)])
def test_stacked_pass_equals_the_modules_forward_and_per_task_vjp(hidden):
    """Forward: the Flax MMoE's task representations. Backward: for cotangents on each
    task's own representation, the vjp of the module with task t's cotangent alone, for
    every t (the per-task gradients a vmapped vjp gives), on every parameter."""
    module = MMoE(NUM_TASKS, NUM_EXPERTS, hidden)
    kx, kp, kc = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (BATCH, DIM))
    params = nn.unbox(module.init(kp, x))["params"]
    # Biases away from zero, so that their gradients and the ReLU masks are exercised.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(kc, p.shape), params)
    cotangents = jax.random.normal(kc, (BATCH, NUM_TASKS, hidden[-1]))

    reps, cache = jax.jit(stacked_grads.mmoe_forward, static_argnums=2)(params, x, NUM_TASKS)
    expected = module.apply({"params": params}, x)
    chex.assert_trees_all_close(reps, expected, rtol=1e-5, atol=1e-6)

    _, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)

    def task_grad(t):
        return vjp([cotangents[:, s] * (s == t) for s in range(NUM_TASKS)])[0]

    reference = jax.jit(jax.vmap(task_grad))(jnp.arange(NUM_TASKS))
    got, below = jax.jit(stacked_grads.mmoe_task_grads)(params, x, cache, cotangents)
    # The input's gradient for weighted task losses, from the per-task cotangents kept.
    weights = jnp.array([0.5, -1.5, 2.0])[:NUM_TASKS]
    _, x_expected = vjp([weights[s] * cotangents[:, s] for s in range(NUM_TASKS)])
    x_got = jax.jit(stacked_grads.mmoe_input_grad)(params, below, weights)
    chex.assert_trees_all_close(x_got, x_expected, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(got) == jax.tree.structure(reference)
    chex.assert_trees_all_close(got, reference, rtol=1e-5, atol=1e-5)
    # Task 0's gradient is not the sum over tasks (the comparison above sees the task axis).
    total = jax.tree.map(lambda g: g.sum(0), reference)
    assert float(jnp.abs(got["experts"]["kernel_0"][0] - total["experts"]["kernel_0"]).max()) > 1e-3


@pytest.mark.parametrize(
    "override, problem",
    [
        ({"model.trunk": "ple"}, "model.trunk='mmoe'"),
        ({"model.dropout": 0.1}, "without dropout"),
        ({"balancing.gramian_params": "experts/kernel_1"}, "gramian_params"),
    ],
)
def test_stacked_refuses_what_it_does_not_compute(override, problem):
    config = tiny_config()
    config.balancing.method = "pcgrad"
    config.model.dropout = 0.0
    config.balancing.task_gradients = "stacked"
    validate(config)  # the MMoE smoke model without dropout is what it covers
    for key, value in override.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ConfigError, match="task_gradients: 'stacked'.*" + re.escape(problem)):
        validate(config)


def test_the_train_step_refuses_a_trunk_it_does_not_compute():
    """Built through the API rather than a validated config: the same reason, not a KeyError
    from inside the hand-written pass."""
    config = tiny_config()
    config.model.trunk = "shared_bottom"
    trainer = Trainer(config, load_dataset(config.data, config.seed))
    with pytest.raises(ValueError, match="'stacked' is written for model.trunk='mmoe'"):
        make_train_step(
            trainer.model, trainer.tasks, trainer.tx, trainer.rule, task_gradients="stacked"
        )


def test_auto_takes_stacked_where_it_applies_and_batched_elsewhere():
    """The default mode resolves by what the model is; the ablation tables count the
    backward passes of the mode it resolved to."""
    config = tiny_config()
    config.model.dropout = 0.0
    model = types.SimpleNamespace(config=config.model, language_model=None)
    assert task_gradient_mode(model, "auto") == "stacked"
    assert task_gradient_mode(model, "auto", "experts/kernel_1") == "batched"
    assert task_gradient_mode(model, "batched") == "batched"
    run = {
        "config": {
            "balancing": {"method": "pcgrad", "task_gradients": "auto", "gramian_params": ""},
            "tasks": ["a", "b", "c"],
            "model": config.model.to_dict(),
        }
    }
    assert ablation.backward_passes(run) == 3  # one stacked pass, T passes' worth
    for key, value in (("dropout", 0.1), ("trunk", "ple")):
        other = config.model.copy_and_resolve_references()
        other[key] = value
        assert task_gradient_mode(types.SimpleNamespace(config=other), "auto") == "batched"
    run["config"]["balancing"]["gramian_params"] = "experts/kernel_1"
    assert ablation.backward_passes(run) == 4  # T to the chosen layer, one whole
    run["config"]["balancing"].update(gramian_params="", task_gradients="batched")
    assert ablation.backward_passes(run) == 4  # T under the vmap, one for the sums
    run["config"]["model"]["trunk"] = "llm"
    assert ablation.backward_passes(run) == 3  # an LM trunk always runs T passes
    assert task_gradient_mode(types.SimpleNamespace(language_model=object()), "auto") == (
        "sequential"
    )
