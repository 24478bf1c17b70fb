"""Rare events: focal loss, negative down-sampling with its calibration correction, and the
calibration metrics that check it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import metrics, parallel, tasks
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, calibration
from tests.helpers import tiny_config

CLICK = tasks.TaskSpec("click", "binary")


def test_focal_loss_closed_form():
    logits, labels = jnp.array([2.0, -1.0, 0.3]), jnp.array([1.0, 0.0, 0.0])
    gamma = 2.0
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    p_true = np.where(np.asarray(labels) > 0, p, 1 - p)
    expected = -np.log(p_true) * (1 - p_true) ** gamma
    focal = dataclasses.replace(CLICK, focal_gamma=gamma)
    np.testing.assert_allclose(tasks.per_example_loss(focal, logits, labels), expected, rtol=1e-5)
    np.testing.assert_allclose(  # gamma 0: plain cross-entropy
        tasks.per_example_loss(CLICK, logits, labels),
        optax.sigmoid_binary_cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_down_sampling_keeps_every_positive_and_a_share_of_negatives():
    sampled = dataclasses.replace(CLICK, negative_rate=0.3)
    labels = (jnp.arange(20_000) % 10 == 0).astype(jnp.float32)  # 2,000 positives
    mask = jnp.ones_like(labels)
    _, count = tasks.masked_loss_sum(sampled, jnp.zeros(20_000), labels, mask, jax.random.key(0))
    assert abs(float(count) - (2_000 + 0.3 * 18_000)) < 4 * np.sqrt(18_000 * 0.3 * 0.7)
    # Evaluation (no key) counts every example and scores calibrated logits.
    loss, count = tasks.masked_loss_sum(sampled, jnp.zeros(4), jnp.zeros(4), jnp.ones(4))
    assert float(count) == 4
    np.testing.assert_allclose(float(loss) / 4, -np.log(1 - 0.3 / 1.3), rtol=1e-6)


def test_prediction_correction_is_the_exact_prior_shift():
    """A head trained with negatives kept at rate r predicts q; the true p = q r / (q r + 1 - q)."""
    r, q = 0.1, 0.5
    sampled = dataclasses.replace(CLICK, negative_rate=r)
    logit = np.log(q / (1 - q))
    got = float(tasks.predict(sampled, jnp.array(logit)))
    assert got == pytest.approx(q * r / (q * r + 1 - q), rel=1e-6)


def test_calibration_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([0.05, 0.15, 0.95, 0.85, 0.9, 0.5])
    # 5 bins of width 0.2: {0.05, 0.15} labels 0+0; {0.5} label 1; {0.85, 0.9, 0.95} labels
    # 1+0+1: |0 - 0.2| + |1 - 0.5| + |2 - 2.7| over 6 examples
    expected = (0.2 + 0.5 + 0.7) / 6
    assert metrics.expected_calibration_error(labels, probs, num_bins=5) == pytest.approx(expected)
    assert metrics.predicted_over_observed(labels, probs) == pytest.approx(probs.mean() / 0.5)


@pytest.mark.slow
def test_down_sampled_training_stays_calibrated():
    """Clicks (~7% positive) trained with 25% of negatives: corrected predictions match the
    observed click rate within 15%; the uncorrected head would over-predict about 3x. Checked
    on the train split: the tiny test split's click rate (8.5%) differs from train's (7.0%)
    by sampling noise alone, which is not what this test is about."""
    config = tiny_config(num_steps=80, batch_size=128)
    config.data.num_impressions = 12_000
    config.task_loss.click.negative_rate = 0.25
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state, it = trainer.init_state(), trainer.train_iterator()
    for _ in range(config.train.num_steps):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    predictions, _ = trainer.predict(state.params, dataset.train)
    click = calibration(trainer.tasks, dataset.train, predictions)["click"]
    ratio = click["predicted_over_observed"]
    assert 0.85 < ratio < 1.15, ratio
    p = np.clip(predictions["click"], 1e-7, 1 - 1e-7)
    uncorrected = p / 0.25 / (p / 0.25 + 1 - p)  # undo the correction: the raw head's q
    assert uncorrected.mean() / dataset.train.labels["click"].mean() > 2.0


def test_imbalance_options_are_checked():
    with pytest.raises(ValueError, match="'rating'.*negative_rate.*regression"):
        tasks.TaskSpec("rating", "regression", negative_rate=0.5)
    with pytest.raises(ValueError, match="'click'.*negative_rate must lie in"):
        tasks.TaskSpec("click", "binary", negative_rate=0.0)
    with pytest.raises(ValueError, match="'category'.*focal_gamma"):
        tasks.TaskSpec("category", "multiclass", num_classes=3, focal_gamma=2.0)
