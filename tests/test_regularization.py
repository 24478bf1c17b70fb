"""Regularisation per parameter group: L1 and L2 penalties through the optax partition, and
the embedding-norm penalty on the rows a batch touches."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtl_jax import configlib, optim, parallel
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, embedding_norm_penalty
from tests.helpers import tiny_config


def test_l1_penalty_adds_sign_of_the_weights():
    tx = optax.chain(optim.add_l1_penalty(0.1), optax.sgd(1.0))
    params = {"w": jnp.array([2.0, -3.0, 0.0])}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1, 0.0])


def test_penalties_reach_only_their_group():
    """Zero loss gradients: only the groups with a penalty move, toward zero."""
    config = tiny_config()
    config.optim.update(weight_decay=0.0, grad_clip_norm=0.0, warmup_steps=0)
    reg = ml_collections.ConfigDict(config.regularization.to_dict())
    reg.l2.trunk = 0.5
    reg.l1.heads = 0.1
    tx = optim.make_optimizer(config.optim, 10, regularization=reg)
    params = {
        "embedding": {"user_id": {"embedding": jnp.ones((3, 2))}},
        "trunk": {"kernel": jnp.full((2, 2), 2.0)},
        "towers_click": {"out": {"kernel": jnp.full((2, 1), -1.0)}},
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert np.all(np.asarray(updates["trunk"]["kernel"]) < 0)  # pulled down toward 0
    assert np.all(np.asarray(updates["towers_click"]["out"]["kernel"]) > 0)  # pulled up to 0
    np.testing.assert_array_equal(updates["embedding"]["user_id"]["embedding"], 0.0)


def test_embedding_norm_gradient_touches_only_looked_up_rows():
    config = tiny_config()
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    embedding = jax.device_get(trainer.init_state().params["embedding"])
    features = {k: np.asarray(v[:8]) for k, v in dataset.train.features.items()}
    features["user_id"] = np.array([3, 3, 3, 5, 7, 7, 9, 9], np.int32)
    grads = jax.grad(lambda e: embedding_norm_penalty(trainer.model, e, features, 0.5))(embedding)
    table = np.asarray(embedding["user_id"]["embedding"])
    got = np.asarray(grads["user_id"]["embedding"])
    counts = np.bincount(features["user_id"], minlength=len(table))
    expected = 2 * 0.5 * counts[:, None] / 8 * table  # d/dw of 0.5 * sum_b |w_b|^2 / B
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert np.all(got[counts == 0] == 0)


def test_embedding_norm_in_training_leaves_untouched_rows(tmp_path):
    config = tiny_config()
    config.data.num_users = 2000  # most users never appear in 5 batches of 64
    config.regularization.embedding_norm = 1.0
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    start = np.asarray(state.params["embedding"]["user_id"]["embedding"])
    it, seen = trainer.train_iterator(), set()
    for _ in range(5):
        local = next(it)
        seen |= set(np.asarray(local["features"]["user_id"]).tolist())
        state, metrics = trainer.train_step(state, parallel.to_global_batch(local, trainer.mesh))
    assert float(metrics["embedding_norm_penalty"]) > 0
    end = np.asarray(state.params["embedding"]["user_id"]["embedding"])
    untouched = np.setdiff1d(np.arange(len(start)), list(seen))
    np.testing.assert_array_equal(end[untouched], start[untouched])
    assert np.linalg.norm(end[list(seen)]) < np.linalg.norm(start[list(seen)]) * 1.5


def test_negative_strengths_are_refused():
    config = tiny_config()
    config.regularization.l1.trunk = -1.0
    with pytest.raises(configlib.ConfigError, match=r"regularization.l1.trunk"):
        configlib.validate(config)


@pytest.mark.parametrize("trunk", ["mmoe", "shared_bottom"])
def test_dropout_acts_in_trunk_and_towers_in_training_only(trunk):
    config = tiny_config()
    config.model.update(trunk=trunk, dropout=0.5)
    trainer = Trainer(config, load_dataset(config.data, 0), mesh=parallel.make_mesh(1))
    params = trainer.init_state().params
    model, variables = trainer.model, {"params": params}
    features = trainer.dataset.train.take(np.arange(16)).columns()["features"]
    x = model.apply(variables, features, method=lambda m, f: m.embed(f))

    def run(fn, key: int):
        return model.apply(variables, x, method=fn, rngs={"dropout": jax.random.PRNGKey(key)})

    trunk_out = lambda train: lambda m, h: m.trunk(h, train=train)[0]
    tower_out = lambda train: lambda m, h: m.towers["click"](m.trunk(h)[0], train=train)
    for part in (trunk_out, tower_out):
        assert not np.allclose(run(part(True), 1), run(part(True), 2))  # a mask per key
        np.testing.assert_array_equal(run(part(False), 1), run(part(False), 2))
