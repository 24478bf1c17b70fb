"""Sparse row updates of embedding tables (optim.sparse_embedding_updates)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import parallel, sparse_rows
from mtl_jax.data import load_dataset
from mtl_jax.optim import scale_by_rowwise_rss
from mtl_jax.trainer import Trainer
from tests.helpers import tiny_config


def test_unique_ids_renumber_a_batch_into_fixed_slots():
    ids = jnp.array([7, 3, 7, 9, 3, 3])
    slots, inverse = sparse_rows.unique_ids(ids, table_rows=10)
    assert slots.shape == (6,)  # min(batch, rows)
    np.testing.assert_array_equal(slots, [3, 7, 9, 10, 10, 10])  # unused slots: past the end
    np.testing.assert_array_equal(slots[inverse], ids)
    small, _ = sparse_rows.unique_ids(jnp.array([1, 0, 1, 0, 1]), table_rows=2)
    np.testing.assert_array_equal(small, [0, 1])  # no more slots than rows


def test_row_view_gathers_and_scatters_only_owned_leaves():
    table = np.arange(20.0, dtype=np.float32).reshape(5, 4)
    params = {"embedding": {"item": {"embedding": table}}, "trunk": {"w": jnp.ones((5, 4))}}
    rowwise = {"embedding": {"item": {"embedding": jnp.arange(5.0)}}}  # one value per row
    state = (optax.ScaleByRssState(params), jnp.int32(3), rowwise)
    shapes = sparse_rows.table_shapes(params, ["item"])
    owners = sparse_rows.row_owners(state, shapes)
    assert jax.tree.leaves(owners) == ["item", "", "", "item"]  # the trunk's (5, 4) is not a table
    slots = {"item": jnp.array([4, 1, 5])}  # 5: an unused slot
    view = sparse_rows.gather_rows(state, owners, slots)
    np.testing.assert_array_equal(view[0].sum_of_squares["embedding"]["item"]["embedding"][2], 0)
    np.testing.assert_array_equal(view[2]["embedding"]["item"]["embedding"], [4, 1, 0])
    changed = jax.tree.map(lambda x: x + 100, view)
    back = sparse_rows.scatter_rows(state, changed, owners, slots)
    got = np.asarray(back[0].sum_of_squares["embedding"]["item"]["embedding"])
    np.testing.assert_array_equal(got[[0, 2, 3]], table[[0, 2, 3]])  # untouched rows
    np.testing.assert_array_equal(got[[4, 1]], table[[4, 1]] + 100)
    assert int(back[1]) == 103  # not a table copy: the view's value
    np.testing.assert_array_equal(back[0].sum_of_squares["trunk"]["w"], 101.0)


def test_rowwise_adagrad_keeps_one_accumulator_per_row():
    tx = scale_by_rowwise_rss(initial_accumulator_value=0.5)
    params = jnp.zeros((3, 2))
    state = tx.init(params)
    g = jnp.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    updates, state = tx.update(g, state)
    np.testing.assert_allclose(state.sum_of_squares, [0.5 + 5.0, 0.5, 0.5 + 4.0])
    np.testing.assert_allclose(updates, g / np.sqrt([[5.5], [0.5], [4.5]]), rtol=1e-6)


def _train(config, dataset, steps, sparse, settle=True):
    config.optim.sparse_embedding_updates = sparse
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
        losses.append(metrics["task_losses"])
    if settle:
        state = trainer.settle(state)
    return jax.device_get((state.params, state.opt_state, np.stack(losses)))


@pytest.mark.parametrize(
    "embedding_optimizer, method",
    [("adagrad", "ew"), ("adagrad", "pcgrad"), ("rowwise_adagrad", "uw")],  # sgd: below
)
def test_sparse_updates_equal_dense_updates(embedding_optimizer, method):
    """20 steps on the same batches: every table and every accumulator is the dense path's
    to float32 round-off (rows no batch touched are bit-identical)."""
    config = tiny_config()
    config.data.num_users = 2000  # most users' rows are never touched in 20 steps
    config.optim.embedding_optimizer = embedding_optimizer
    config.balancing.method = method
    dataset = load_dataset(config.data, config.seed)
    dense = _train(config, dataset, 20, sparse=False)[:2]
    sparse = _train(config, dataset, 20, sparse=True)[:2]
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(dense), jax.tree.leaves(sparse), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
    table = dense[0]["embedding"]["user_id"]["embedding"]
    initial = Trainer(config, dataset, mesh=parallel.make_mesh(1)).init_state().params
    untouched = np.all(table == np.asarray(initial["embedding"]["user_id"]["embedding"]), axis=1)
    assert 1000 < untouched.sum() < 2000
    sparse_table = sparse[0]["embedding"]["user_id"]["embedding"]
    np.testing.assert_array_equal(sparse_table[untouched], table[untouched])


def test_sparse_updates_equal_dense_updates_with_bags_and_dense_columns():
    """The file template (a multi_hot bag of tags, hashed ids, dense columns): a bag's ids
    share the slots of its table like single ids do."""
    from configs import files as files_config

    config = files_config.get_config("smoke").unlock()
    dataset = load_dataset(config.data, config.seed, config.features)
    dense = _train(config, dataset, 10, sparse=False)[:2]
    sparse = _train(config, dataset, 10, sparse=True)[:2]
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(dense), jax.tree.leaves(sparse), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
    initial = Trainer(config, dataset, mesh=parallel.make_mesh(1)).init_state().params
    tags = dense[0]["embedding"]["tags"]["embedding"]
    assert not np.allclose(tags, initial["embedding"]["tags"]["embedding"])


def _two_steps(config, dataset):
    """The user table after step 1 and after step 2, and the user ids of each batch."""
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    tables, ids = [], []
    for _ in range(2):
        batch = next(it)
        ids.append(np.asarray(batch["features"]["user_id"]))
        state, _ = trainer.train_step(state, parallel.to_global_batch(batch, trainer.mesh))
        tables.append(np.asarray(jax.device_get(state.params["embedding"]["user_id"]["embedding"])))
    return tables, ids


@pytest.mark.parametrize("optimizer, l2", [("adam", 0.0)])
def test_sparse_adam_is_lazy(optimizer, l2):
    """Rows seen in step 1 but not in step 2: dense Adam keeps moving them (momentum); the
    sparse step leaves them exactly as step 1 left them, and still moves the rows step 2
    touches. (The tables' L2 under sparse updates: test_sparse_l2_catches_up_on_missed_steps.)"""
    config = tiny_config()
    config.data.num_users = 2000
    config.optim.embedding_optimizer = optimizer
    config.optim.embedding_l2 = l2
    dataset = load_dataset(config.data, config.seed)
    config.optim.sparse_embedding_updates = False
    (dense_1, dense_2), ids = _two_steps(config, dataset)
    config.optim.sparse_embedding_updates = True
    (sparse_1, sparse_2), sparse_ids = _two_steps(config, dataset)
    np.testing.assert_array_equal(ids[0], sparse_ids[0])
    np.testing.assert_allclose(sparse_1, dense_1, rtol=1e-5, atol=1e-6)  # the same first step
    left = np.setdiff1d(ids[0], ids[1])
    assert len(left) > 10
    np.testing.assert_array_equal(sparse_2[left], sparse_1[left])
    assert np.abs(dense_2[left] - dense_1[left]).max() > 1e-4
    assert np.abs(sparse_2[ids[1]] - sparse_1[ids[1]]).max() > 1e-4


@pytest.mark.parametrize("sparse", [False, True])
def test_bfloat16_tables_train_close_to_float32(sparse):
    """model.embedding_dtype=bfloat16: tables stored in bfloat16 (half the bytes), the
    optimizer's state float32. Over 20 steps every task's training loss stays within 1% of
    the float32 run's, and the tables within 1e-2 (bfloat16 keeps 8 significant bits: a
    value of 0.5 rounds by up to 2e-3)."""
    config = tiny_config()
    dataset = load_dataset(config.data, config.seed)
    params32, _, losses32 = _train(config, dataset, 20, sparse)
    config.model.embedding_dtype = "bfloat16"
    params16, opt16, losses16 = _train(config, dataset, 20, sparse)
    np.testing.assert_allclose(losses16, losses32, rtol=1e-2)
    tables = params16["embedding"]
    assert {tables[n]["embedding"].dtype for n in ("user_id", "item_id")} == {jnp.dtype("bfloat16")}
    copies = [x for x in jax.tree.leaves(opt16) if x.shape == tables["user_id"]["embedding"].shape]
    assert copies and all(x.dtype == np.float32 for x in copies)  # Adagrad's sums
    for name, table in params32["embedding"].items():
        got = np.asarray(params16["embedding"][name]["embedding"], np.float32)
        np.testing.assert_allclose(got, table["embedding"], atol=1e-2, err_msg=name)


@pytest.mark.slow
def test_a_run_with_sparse_updates_reports_the_dense_runs_metrics(tmp_path):
    """The e-commerce smoke run (shrunk), Adagrad tables: results.json's test metrics with
    optim.sparse_embedding_updates on equal those with it off (rtol 1e-4)."""
    from mtl_jax.train import train_and_evaluate

    config = tiny_config(num_steps=20, eval_every=10, checkpoint_every=10, log_every=5)
    dense = train_and_evaluate(config, str(tmp_path / "dense"))
    config.optim.sparse_embedding_updates = True
    sparse = train_and_evaluate(config, str(tmp_path / "sparse"))
    assert sparse["best_step"] == dense["best_step"]
    for task, metrics in dense["test"].items():
        for metric, value in metrics.items():
            assert sparse["test"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "sgd"])
def test_sparse_l2_catches_up_on_missed_steps(optimizer):
    """optim.embedding_l2 with sparse updates: a row gets the pulls of the steps it missed
    when a batch next touches it (and every row gets its pending pulls when the state is
    settled, as before evaluation), so 20 steps end where the dense path does (to 1e-4: the
    catch-up holds Adagrad's accumulator fixed over the missed steps); unsettled, rows the
    last batches skipped still wait for their pulls."""
    config = tiny_config()
    config.data.num_users = 300
    config.optim.update(embedding_optimizer=optimizer, embedding_l2=0.05)
    dataset = load_dataset(config.data, config.seed)
    dense = _train(config, dataset, 20, sparse=False)[0]["embedding"]
    sparse = _train(config, dataset, 20, sparse=True)[0]["embedding"]
    for name in ("user_id", "item_id", "brand", "age"):
        got, want = sparse[name]["embedding"], dense[name]["embedding"]
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
    if optimizer != "adagrad":
        return
    pending = _train(config, dataset, 20, sparse=True, settle=False)[0]["embedding"]
    lag = np.abs(pending["user_id"]["embedding"] - dense["user_id"]["embedding"]).max()
    assert lag > 1e-4
    config.optim.embedding_l2 = 0.0
    plain = _train(config, dataset, 20, sparse=True)[0]["embedding"]
    for name in ("user_id", "item_id"):  # the penalty matters
        assert np.abs(plain[name]["embedding"] - dense[name]["embedding"]).max() > 3e-3
