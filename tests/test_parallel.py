"""2-D (data, model) meshes: embedding tables sharded by rows train exactly like one device."""

import functools
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import configlib, parallel
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, train_and_evaluate
from tests.helpers import tiny_config


def _config(method: str, **axis_rules):
    config = tiny_config()
    config.balancing.method = method
    config.mesh.axis_rules.update(axis_rules)
    return config


@functools.cache
def _dataset():
    config = tiny_config()
    return load_dataset(config.data, config.seed)


def _train(config, mesh, steps=20):
    trainer = Trainer(config, _dataset(), mesh=mesh)
    state = trainer.init_state()
    it = trainer.train_iterator()
    for _ in range(steps):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    return trainer, state


@functools.cache
def _one_device_params(method: str):
    _, state = _train(_config(method), parallel.make_mesh(1))
    return jax.device_get(state.params)


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
@pytest.mark.parametrize("data, model", [(8, 1), (4, 2), (2, 4)])
def test_mesh_equals_one_device(method, data, model):
    """Tables sharded by rows over ``model``, batch over ``data``: after 20 steps the same
    parameters as one device (up to float summation order)."""
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    trainer, state = _train(_config(method), parallel.make_mesh(data * model, model=model))
    assert dict(trainer.mesh.shape) == {"data": data, "model": model}
    users = state.params["embedding"]["user_id"]["embedding"]  # 120 rows
    if model > 1:
        # Really sharded: each device holds 1/model of the rows, and so do Adam/Adagrad's
        # copies of the table in the optimizer state.
        assert users.sharding.spec == jax.P("model", None)
        assert {s.data.shape for s in users.addressable_shards} == {(120 // model, 8)}
        copies = [
            leaf
            for leaf in jax.tree.leaves(state.opt_state)
            if getattr(leaf, "shape", None) == users.shape
        ]
        assert copies and all(c.sharding.spec == jax.P("model", None) for c in copies)
    chex.assert_trees_all_close(
        jax.device_get(state.params), _one_device_params(method), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
@pytest.mark.parametrize("data, model", [(1, 8), (4, 2)])
def test_sparse_row_updates_on_a_mesh_equal_dense_on_one_device(method, data, model):
    """optim.sparse_embedding_updates with tables split by rows (each device reads and writes
    its own rows through shard_map): after 20 steps the parameters of the dense step on one
    device."""
    config = _config(method)
    config.optim.sparse_embedding_updates = True
    trainer, state = _train(config, parallel.make_mesh(data * model, model=model))
    users = state.params["embedding"]["user_id"]["embedding"]
    assert users.sharding.spec == jax.P("model", None)
    chex.assert_trees_all_close(
        jax.device_get(state.params), _one_device_params(method), rtol=1e-5, atol=1e-6
    )


def test_sparse_row_updates_keep_row_wise_state_split_by_rows():
    """Row-wise Adagrad's one-accumulator-per-row state is split like its table's rows."""
    config = _config("ew")
    config.optim.update(embedding_optimizer="rowwise_adagrad", sparse_embedding_updates=True)
    trainer, state = _train(config, parallel.make_mesh(8, model=4), steps=3)
    (acc,) = [
        leaf for leaf in jax.tree.leaves(state.opt_state) if getattr(leaf, "shape", None) == (120,)
    ]
    assert acc.sharding.spec == jax.P("model")
    assert {s.data.shape for s in acc.addressable_shards} == {(30,)}


def test_tables_that_do_not_divide_stay_whole():
    """JAX shards evenly only: a 7-row table on a 4-way model axis is replicated, not an error."""
    trainer = Trainer(_config("ew"), _dataset(), mesh=parallel.make_mesh(8, model=4))
    tables = trainer.state_sharding.params["embedding"]
    assert tables["age"]["embedding"].spec == jax.P(None, None)  # 7 age buckets
    assert tables["user_id"]["embedding"].spec == jax.P("model", None)


def test_dense_layers_shard_as_configured():
    """``axis_rules.expert=model``: MMoE's expert kernels split by expert, same training."""
    config = _config("ew", expert="model")
    trainer, state = _train(config, parallel.make_mesh(8, model=2))
    kernel = state.params["trunk"]["experts"]["kernel_0"]
    assert kernel.sharding.spec == jax.P("model", None, None)
    assert {s.data.shape[0] for s in kernel.addressable_shards} == {kernel.shape[0] // 2}
    chex.assert_trees_all_close(
        jax.device_get(state.params), _one_device_params("ew"), rtol=1e-5, atol=1e-6
    )


def test_like_params_matches_by_path_and_shape():
    params = {"a": jnp.zeros((4, 2)), "b": {"c": jnp.zeros(3)}}
    mesh = parallel.make_mesh(8, model=2)
    row = jax.sharding.NamedSharding(mesh, jax.P("model"))
    whole = parallel.replicated(mesh)
    shardings = {"a": row, "b": {"c": whole}}
    state = ({"mu": params, "count": jnp.zeros(())}, {"a": jnp.zeros(5)})
    got = parallel.like_params(state, params, shardings, whole)
    assert got[0]["mu"]["a"] is row and got[0]["mu"]["b"]["c"] is whole
    assert got[0]["count"] is whole
    assert got[1]["a"] is whole  # same path, other shape: not a copy of the parameter


@pytest.mark.parametrize(
    "text, expected", [("8", (8, 1)), ("4x2", (8, 2)), ("2X4", (8, 4)), ("1", (1, 1))]
)
def test_parse_mesh_shape(text, expected):
    assert parallel.parse_mesh_shape(text) == expected


@pytest.mark.parametrize("text", ["", "4x", "x2", "0x2", "4x2x1", "eight"])
def test_parse_mesh_shape_rejects(text):
    with pytest.raises(ValueError, match="DATAxMODEL"):
        parallel.parse_mesh_shape(text)


def test_model_axis_must_divide_devices():
    with pytest.raises(ValueError, match="model axis 3 does not divide the 8 devices"):
        parallel.make_mesh(8, model=3)


def test_bad_axis_rules_are_named():
    config = tiny_config()
    config.mesh.axis_rules.vocab = "tensor"
    with pytest.raises(configlib.ConfigError, match="vocab='tensor'.*'data', 'model'"):
        configlib.validate(config)
    config = tiny_config()
    with config.mesh.axis_rules.unlocked():
        config.mesh.axis_rules.heads = "model"
    with pytest.raises(configlib.ConfigError, match=r"unknown logical axes \['heads'\]"):
        configlib.validate(config)


def test_batch_split_over_data_and_replicated_over_model():
    mesh = parallel.make_mesh(8, model=4)
    batch = parallel.to_global_batch({"x": np.arange(6, dtype=np.float32)}, mesh)
    shards = {tuple(s.data.tolist()) for s in batch["x"].addressable_shards}
    assert shards == {(0.0, 1.0, 2.0), (3.0, 4.0, 5.0)}


def test_resume_on_another_mesh(tmp_path, caplog):
    """A checkpoint written on 8x1 (tables whole) resumes on 2x4 (tables split by rows):
    Orbax reshards on restore, and the run ends where an uninterrupted 8x1 run ends."""
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=5)
    config.mesh.num_devices = 8
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert train_and_evaluate(config, str(tmp_path / "moved"), max_steps_this_run=10) is None
    config.mesh.model = 4
    with caplog.at_level(logging.INFO, logger="mtl_jax"):
        moved = train_and_evaluate(config, str(tmp_path / "moved"))
    assert "resumed from step 10" in caplog.text
    assert "['user_id']['embedding']: ('model', None)" in caplog.text  # really on 2x4
    assert moved["steps_trained"] == straight["steps_trained"]
    for task, metrics in straight["test"].items():
        for name, value in metrics.items():
            assert moved["test"][task][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
