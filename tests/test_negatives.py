"""Sampled negatives for an implicit task (mtl_jax/data/negatives.py): the rows they build,
the distribution they are drawn from, the logQ offsets the train step adds, evaluation
splits, and the config checks. Offline: the MovieLens sample in tests/data."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtl_jax import configlib, ranking
from mtl_jax.data import movielens, negatives
from mtl_jax.errors import ConfigError
from mtl_jax.step import task_loss_sums
from mtl_jax.tasks import TaskSpec

SAMPLE = pathlib.Path(__file__).parent / "data" / "ml-100k-sample"


@pytest.fixture(scope="module")
def dataset():
    return movielens.build_dataset(str(SAMPLE))


def _section(**kw) -> ml_collections.ConfigDict:
    c = negatives.default_config()
    c.update(task="rated", **kw)
    return c


def _batch(dataset, rows: int = 8):
    cols = dataset.train.columns()
    return {g: {k: v[:rows] for k, v in d.items()} for g, d in cols.items()}


def test_train_batch_appends_k_negatives_per_positive_with_catalogue_features(dataset):
    sampler = negatives.NegativeSampler.from_config(_section(per_positive=3), dataset)
    batch = _batch(dataset)
    out = sampler.train_batch(batch, step=5, seed=0)
    n, k = 8, 3
    feats = out["features"]
    assert len(feats["user_id"]) == n * (1 + k)
    for name, col in batch["features"].items():  # positives first, unchanged
        np.testing.assert_array_equal(feats[name][:n], col)
    neg = slice(n, None)
    np.testing.assert_array_equal(feats["user_id"][neg], np.repeat(batch["features"]["user_id"], k))
    cat = dataset.catalogue
    expected = cat.pair_features(feats["user_id"][neg], feats["item_id"][neg])
    for name in batch["features"]:
        np.testing.assert_array_equal(feats[name][neg], expected[name])
        assert feats[name].dtype == batch["features"][name].dtype
    assert set(feats["item_id"][neg]) <= set(cat.items.tolist())
    np.testing.assert_array_equal(out["labels"]["rated"], [1] * n + [0] * (n * k))
    np.testing.assert_array_equal(out["masks"]["rated"], np.ones(n * (1 + k)))
    for task in ("rating", "like", "genre"):  # negatives say nothing about the other tasks
        assert not out["masks"][task][neg].any()
        np.testing.assert_array_equal(out["masks"][task][:n], batch["masks"][task])
    # Drawn from (seed, step): the same again, different at another step or seed.
    again = sampler.train_batch(batch, step=5, seed=0)["features"]["item_id"]
    np.testing.assert_array_equal(again, feats["item_id"])
    assert not np.array_equal(sampler.train_batch(batch, 6, 0)["features"]["item_id"], again)
    assert not np.array_equal(sampler.train_batch(batch, 5, 1)["features"]["item_id"], again)


def test_popularity_distribution_and_logq_offsets(dataset):
    c = _section(sampling="popularity", popularity_power=0.5, per_positive=4)
    sampler = negatives.NegativeSampler.from_config(c, dataset)
    counts = np.bincount(dataset.train.features["item_id"], minlength=sampler.items.max() + 1)
    q = np.maximum(counts[sampler.items], 1) ** 0.5
    np.testing.assert_allclose(sampler.probabilities, q / q.sum())
    # Offsets: -log(K Q(item)), per row.
    ids = sampler.items[[0, 5, 9]]
    np.testing.assert_allclose(
        sampler.offsets(ids), -np.log(4 * sampler.probabilities[[0, 5, 9]]), rtol=1e-6
    )
    # Draws follow Q: the empirical frequencies of many batches' negatives.
    batch = _batch(dataset, 256)
    drawn = np.concatenate(
        [sampler.train_batch(batch, s, 0)["features"]["item_id"][256:] for s in range(40)]
    )
    freq = np.bincount(drawn, minlength=sampler.items.max() + 1)[sampler.items] / len(drawn)
    top = np.argsort(-sampler.probabilities)[:10]
    np.testing.assert_allclose(freq[top], sampler.probabilities[top], atol=4e-3)
    out = sampler.train_batch(batch, 0, 0)
    np.testing.assert_allclose(
        out[negatives.OFFSETS]["rated"], sampler.offsets(out["features"]["item_id"]), rtol=1e-6
    )
    assert negatives.OFFSETS not in negatives.NegativeSampler.from_config(
        _section(logq_correction=False), dataset
    ).train_batch(batch, 0, 0)


def test_initial_logit_makes_the_corrected_head_predict_the_batch_rate(dataset):
    """logit + offset, averaged over Q's draws, starts at the positive rate 1 / (1 + K)."""
    sampler = negatives.NegativeSampler.from_config(_section(sampling="popularity"), dataset)
    mean_offset = float((sampler.probabilities * sampler.offsets(sampler.items)).sum())
    assert sampler.initial_logit() + mean_offset == pytest.approx(np.log(1 / 4))


def test_train_loss_adds_the_offsets_to_the_task_logits():
    """The step's loss is BCE(logit + offset), and only for the tasks the offsets name."""
    tasks = (TaskSpec("rated", "binary"), TaskSpec("like", "binary"))
    logits = {"rated": jnp.array([0.3, -1.0, 2.0]), "like": jnp.array([0.5, 0.1, -0.2])}
    labels = {"rated": jnp.array([1.0, 0.0, 0.0]), "like": jnp.array([1.0, 0.0, 1.0])}
    masks = {k: jnp.ones(3) for k in labels}
    offsets = jnp.array([-2.0, 1.5, 0.25])
    batch = {"labels": labels, "masks": masks, negatives.OFFSETS: {"rated": offsets}}
    sums, counts = task_loss_sums(tasks, logits, batch)

    def bce(z, y):
        return float(np.sum(np.logaddexp(0, z) - y * z))

    z = np.asarray(logits["rated"]) + np.asarray(offsets)
    assert float(sums[0]) == pytest.approx(bce(z, np.asarray(labels["rated"])), rel=1e-6)
    assert float(sums[1]) == pytest.approx(
        bce(np.asarray(logits["like"]), np.asarray(labels["like"])), rel=1e-6
    )
    np.testing.assert_allclose(counts, [3, 3])


def test_evaluation_split_adds_uniform_negatives_once(dataset):
    sampler = negatives.NegativeSampler.from_config(
        _section(sampling="popularity", per_positive=2, popularity_power=1.0), dataset
    )
    val = dataset.validation
    ev = sampler.evaluation_split(val, seed=3)
    n = len(val)
    assert len(ev) == 3 * n
    np.testing.assert_array_equal(ev.labels["rated"], [1] * n + [0] * (2 * n))
    assert not ev.masks["like"][n:].any() and ev.masks["like"][:n].all()
    again = sampler.evaluation_split(val, seed=3)
    np.testing.assert_array_equal(again.features["item_id"], ev.features["item_id"])
    # Uniform whatever the training sampler: the mean Q of the drawn items is 1 / N for
    # uniform draws and sum(Q^2) (larger) for draws from Q.
    q = sampler.probabilities
    drawn_q = np.zeros(sampler.items.max() + 1)
    drawn_q[sampler.items] = q
    mean_q = drawn_q[ev.features["item_id"][n:]].mean()
    uniform, popular = 1 / len(q), float((q**2).sum())
    assert popular > 1.5 * uniform
    assert abs(mean_q - uniform) < 0.25 * (popular - uniform)


def test_validation_positives_join_train_for_the_implicit_task_only(dataset):
    joined = negatives.with_validation_positives(dataset, "rated")
    n_train, n_val = len(dataset.train), len(dataset.validation)
    assert len(joined.train) == n_train + n_val
    added = slice(n_train, None)
    np.testing.assert_array_equal(
        joined.train.features["item_id"][added], dataset.validation.features["item_id"]
    )
    assert joined.train.masks["rated"][added].all()
    for task in ("rating", "like", "genre"):
        assert not joined.train.masks[task][added].any()
    assert joined.validation is dataset.validation and joined.test is dataset.test


def test_fusion_modes_match_their_formulas():
    p = {"rated": np.array([0.2, 0.5]), "like": np.array([0.9, 0.1])}
    w = {"rated": 1.0, "like": 2.0}
    np.testing.assert_allclose(ranking.fuse(p, w, "sum"), [0.2 + 1.8, 0.5 + 0.2])
    np.testing.assert_allclose(ranking.fuse(p, w, "product"), [0.2 * 0.81, 0.5 * 0.01])
    np.testing.assert_allclose(
        ranking.fuse(p, w, "log_sum"), np.log(ranking.fuse(p, w, "product")), rtol=1e-12
    )
    with pytest.raises(ValueError, match="unknown fusion mode"):
        ranking.fuse(p, w, "max")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(task="like_typo"), "must be a binary task of this run"),
        (dict(task="rating"), "must be a binary task of this run"),
        (dict(per_positive=0), "per_positive must be an int >= 1"),
        (dict(sampling="hard"), "sampling 'hard'"),
        (dict(popularity_power=1.5), "popularity_power must lie in"),
    ],
)
def test_bad_negatives_sections_are_config_errors(dataset, change, message):
    from configs import movielens as movielens_config

    config = movielens_config.get_config("smoke")
    config.data.data_dir = str(SAMPLE)
    config.negatives.update(**change)
    with pytest.raises(ConfigError, match=message):
        configlib.validate_against_dataset(config, dataset)


def test_negatives_need_a_catalogue_and_an_id_trunk(dataset):
    import dataclasses

    from configs import movielens as movielens_config

    config = movielens_config.get_config("smoke")
    with pytest.raises(ConfigError, match="no catalogue"):
        configlib.validate_against_dataset(config, dataclasses.replace(dataset, catalogue=None))
    config.model.trunk = configlib.LM_TRUNK
    config.ranking.enabled = False
    with pytest.raises(ConfigError, match="model.trunk='llm'"):
        configlib.validate_against_dataset(config, dataset)


def test_trainer_batches_carry_the_negatives_and_offsets():
    """configs/movielens.py:smoke trains the implicit task: each batch holds batch_size
    positives and K negatives each, with the logQ offsets, and evaluation adds negatives."""
    from configs import movielens as movielens_config
    from mtl_jax import parallel
    from mtl_jax.trainer import Trainer, load_run_dataset

    config = movielens_config.get_config("smoke")
    config.data.data_dir = str(SAMPLE)
    k, b = config.negatives.per_positive, config.train.batch_size
    trainer = Trainer(config, load_run_dataset(config), mesh=parallel.make_mesh(1))
    batch = next(trainer.train_iterator(num_steps=1))
    assert len(batch["features"]["item_id"]) == b * (1 + k)
    assert batch["labels"]["rated"].sum() == b
    assert batch[negatives.OFFSETS]["rated"].shape == (b * (1 + k),)
    val = trainer.evaluation_split(trainer.dataset.validation)
    assert len(val) == len(trainer.dataset.validation) * (1 + k)
