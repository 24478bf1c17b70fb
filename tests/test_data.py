"""Simulator properties and the grain pipeline's batching, sharding and resumability."""

import grain
import numpy as np
import pytest

from mtl_jax import metrics
from mtl_jax.data.ecommerce import expected_rounded_rating, simulate_ecommerce
from mtl_jax.data.news import simulate_news
from mtl_jax.data.pipeline import eval_batches, train_iterator
from mtl_jax.data.simulation import history_topic
from mtl_jax.data.social import simulate_social


@pytest.fixture(scope="module")
def dataset():
    return simulate_ecommerce(num_users=2000, num_items=500, num_impressions=60_000, seed=3)


def test_deterministic_from_seed(dataset):
    again = simulate_ecommerce(num_users=2000, num_items=500, num_impressions=60_000, seed=3)
    for col in ("user_id", "item_id"):
        np.testing.assert_array_equal(again.train.features[col], dataset.train.features[col])
    np.testing.assert_array_equal(again.test.labels["click"], dataset.test.labels["click"])
    other = simulate_ecommerce(num_users=2000, num_items=500, num_impressions=60_000, seed=4)
    assert not np.array_equal(other.train.labels["click"], dataset.train.labels["click"])


def test_funnel(dataset):
    s = dataset.train
    click, purchase = s.labels["click"], s.labels["purchase"]
    assert 0.05 <= click.mean() <= 0.10
    assert 0.005 <= purchase.mean() <= 0.02
    assert np.all(purchase <= click), "a purchase happens only after a click"
    # Ratings exist exactly for purchases and lie in 1..5.
    np.testing.assert_array_equal(s.masks["rating"], purchase)
    rated = s.labels["rating"][s.masks["rating"] > 0]
    assert set(np.unique(rated)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # The category label is the item's category.
    np.testing.assert_array_equal(s.labels["category"], s.features["category"])


def test_cvr_task_is_purchase_given_click_with_an_entire_space_oracle(dataset):
    s = dataset.train
    click = s.labels["click"]
    np.testing.assert_array_equal(s.masks["cvr"], click)  # labelled where clicked only
    np.testing.assert_array_equal(s.labels["cvr"][click > 0], s.labels["purchase"][click > 0])
    # P(purchase) = P(click) P(purchase | click), on every impression.
    np.testing.assert_allclose(s.oracle["purchase"], s.oracle["click"] * s.oracle["cvr"], 1e-6)
    # Calibrated over clicks: the clicked impressions' purchase rate matches their oracle.
    clicked = click > 0
    assert abs(s.labels["cvr"][clicked].mean() - s.oracle["cvr"][clicked].mean()) < 0.015


def test_long_tail(dataset):
    counts = np.bincount(dataset.train.features["item_id"], minlength=500)
    top = np.sort(counts)[::-1]
    assert top[: 500 // 5].sum() / top.sum() > 0.6, "the top 20% of items get most impressions"


def test_oracle_is_calibrated_and_beats_trivial(dataset):
    s = dataset.test
    for task in ("click", "purchase"):
        assert s.oracle[task].mean() == pytest.approx(s.labels[task].mean(), rel=0.15)
        assert metrics.auc(s.labels[task], s.oracle[task]) > 0.75
    m = s.masks["rating"] > 0
    trivial = np.full(
        m.sum(), dataset.train.labels["rating"][dataset.train.masks["rating"] > 0].mean()
    )
    assert metrics.rmse(s.labels["rating"][m], s.oracle["rating"][m]) < metrics.rmse(
        s.labels["rating"][m], trivial
    )


def test_task_correlation_knob():
    def click_purchase_oracle_corr(rho):
        d = simulate_ecommerce(
            num_users=500, num_items=200, num_impressions=20_000, task_correlation=rho, seed=0
        )
        return np.corrcoef(d.train.oracle["click"], d.train.oracle["purchase"])[0, 1]

    assert click_purchase_oracle_corr(0.95) > click_purchase_oracle_corr(0.0) + 0.1


def test_expected_rounded_rating_matches_monte_carlo():
    rng = np.random.default_rng(0)
    means = np.array([0.2, 2.7, 3.5, 4.9, 6.0])
    samples = np.clip(np.round(means[:, None] + rng.normal(0, 0.6, (5, 200_000))), 1, 5)
    np.testing.assert_allclose(expected_rounded_rating(means, 0.6), samples.mean(1), atol=0.01)


def test_bad_knob_is_rejected():
    with pytest.raises(ValueError, match="task_correlation"):
        simulate_ecommerce(num_impressions=100, task_correlation=1.5)


def _collect(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_cover_each_epoch_once(dataset):
    split = dataset.validation  # 6000 rows
    it = train_iterator(split, batch_size=1000, num_steps=12, seed=0)
    batches = _collect(it, 12)
    ids = lambda bs: np.sort(np.concatenate([b["features"]["user_id"] for b in bs]))
    # 6 full batches per epoch, so each epoch is a permutation of the split.
    np.testing.assert_array_equal(ids(batches[:6]), np.sort(split.features["user_id"]))
    np.testing.assert_array_equal(ids(batches[6:]), np.sort(split.features["user_id"]))
    # A new epoch reshuffles.
    assert not np.array_equal(batches[0]["labels"]["click"], batches[6]["labels"]["click"])


def test_train_iterator_resumes_exactly(dataset):
    split = dataset.validation
    straight = _collect(train_iterator(split, batch_size=500, num_steps=30, seed=1), 30)
    first = train_iterator(split, batch_size=500, num_steps=30, seed=1)
    _collect(first, 13)
    state = first.get_state()
    resumed = train_iterator(split, batch_size=500, num_steps=30, seed=1)
    resumed.set_state(state)
    for expect, got in zip(straight[13:], _collect(resumed, 17), strict=True):
        np.testing.assert_array_equal(expect["features"]["item_id"], got["features"]["item_id"])


def test_eval_batches_pad_with_zero_masks(dataset):
    split = dataset.test
    batches = list(eval_batches(split, 4096))
    assert len(batches) == 2 and all(len(b["labels"]["click"]) == 4096 for b in batches)
    tail = len(split) - 4096
    assert batches[1]["masks"]["click"][tail:].sum() == 0
    np.testing.assert_array_equal(
        np.concatenate([b["features"]["item_id"] for b in batches])[: len(split)],
        split.features["item_id"],
    )


def test_batch_larger_than_split_is_an_error(dataset):
    with pytest.raises(ValueError, match="exceeds"):
        train_iterator(dataset.test.take(np.arange(10)), batch_size=64, num_steps=1, seed=0)


def test_process_sharding_uses_grain_options(monkeypatch, dataset):
    """Two processes each get their own contiguous half of every global batch."""
    from mtl_jax.data import pipeline

    full = _collect(train_iterator(dataset.test, batch_size=100, num_steps=3, seed=0), 3)
    halves = []
    for index in (0, 1):
        monkeypatch.setattr(
            pipeline.grain.sharding,
            "ShardByJaxProcess",
            lambda drop_remainder, i=index: grain.sharding.ShardOptions(i, 2, drop_remainder),
        )
        halves.append(
            _collect(train_iterator(dataset.test, batch_size=100, num_steps=3, seed=0), 3)
        )
    for step in range(3):
        joined = np.sort(np.concatenate([h[step]["features"]["user_id"] for h in halves]))
        np.testing.assert_array_equal(joined, np.sort(full[step]["features"]["user_id"]))
        assert len(halves[0][step]["features"]["user_id"]) == 50


COLD_START = {
    "ecommerce items": (
        simulate_ecommerce, "item_id", "items", "cold_item_fraction",
        dict(num_users=300, num_items=200, num_impressions=20_000, num_brands=20), 20,
    ),
    "news readers": (
        simulate_news, "user_id", "users", "cold_user_fraction",
        dict(num_users=300, num_items=200, num_impressions=20_000, num_sources=10), 30,
    ),
    "social viewers": (
        simulate_social, "user_id", "users", "cold_user_fraction",
        dict(num_users=300, num_authors=30, num_items=200, num_impressions=20_000), 30,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(COLD_START))
def test_cold_ids_appear_only_in_their_held_out_split(case):
    """cold_item_fraction / cold_user_fraction: the test-cold ids' rows are all in test
    (none in train or validation), the validation-cold ids' all in validation; the subsets
    name them."""
    simulate, column, kind, knob, kw, count = COLD_START[case]
    ds = simulate(seed=3, **{knob: 0.1}, **kw)
    plain = simulate(seed=3, **kw)
    assert sum(ds.sizes().values()) == sum(plain.sizes().values())  # rows only move
    test_ids = ds.test.features[column]
    cold_rows = ds.test_subsets[f"cold_{kind}"]
    cold = np.unique(test_ids[cold_rows])
    val_cold = np.unique(ds.validation.features[column][ds.validation_subsets[f"cold_{kind}"]])
    assert len(cold) == len(val_cold) == count and not set(cold) & set(val_cold)
    train_ids = set(ds.train.features[column].tolist())
    assert not train_ids & set(cold.tolist()) and not train_ids & set(val_cold.tolist())
    assert not set(ds.validation.features[column].tolist()) & set(cold.tolist())
    assert not set(test_ids.tolist()) & set(val_cold.tolist())
    warm = test_ids[ds.test_subsets[f"warm_{kind}"]]
    assert not set(warm.tolist()) & set(cold.tolist())
    assert len(cold_rows) + len(warm) == len(ds.test)
    # Every row of a cold id is in test: as many as the id has in the whole log.
    all_ids = np.concatenate(
        [getattr(plain, s).features[column] for s in ("train", "validation", "test")]
    )
    assert np.isin(all_ids, cold).sum() == len(cold_rows)


def _history_topic_by_hand(user, topic, click, none):
    """The definition, one impression at a time: the most-clicked topic among the user's
    earlier clicks, ties to the latest of them."""
    out = []
    for j in range(len(user)):
        earlier = [i for i in range(j) if user[i] == user[j] and click[i]]
        if not earlier:
            out.append(none)
            continue
        counts = {}
        for i in earlier:
            counts[topic[i]] = counts.get(topic[i], 0) + 1
        top = max(counts.values())
        out.append(next(topic[i] for i in reversed(earlier) if counts[topic[i]] == top))
    return np.array(out)


def test_history_topic_is_the_most_clicked_earlier_topic():
    rng = np.random.default_rng(0)
    user = rng.integers(7, size=300)
    topic = rng.integers(4, size=300)
    click = rng.random(300) < 0.4
    np.testing.assert_array_equal(
        history_topic(user, topic, click, 4), _history_topic_by_hand(user, topic, click, 4)
    )


@pytest.mark.parametrize(
    "simulate, kw",
    [(simulate_news, dict(topic_affinity=3.0)), (simulate_social, {})],
    ids=["news (as configs/news.py:cold)", "social"],
)
def test_new_users_history_tells_their_topic_better_than_chance(simulate, kw):
    """The signal a new reader's topic can be learnt from: where the history is known it
    names the reader's topic more often than the most common topic does."""
    ds = simulate(seed=1, cold_user_fraction=0.1, **kw)
    cold = ds.test.take(ds.test_subsets["cold_users"])
    history, topic = cold.features["history_topic"], cold.labels["topic"]
    known = history < ds.tasks[-1].num_classes
    majority = np.bincount(topic).max() / len(topic)
    assert 0.3 < known.mean() < 0.95
    assert (history[known] == topic[known]).mean() > majority + 0.03
