"""Masked losses and predictions against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import tasks


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_masked_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=16).astype(np.float32)
    mask = (rng.random(16) < 0.5).astype(np.float32)
    y = (rng.random(16) < 0.3).astype(np.float32)
    s, c = tasks.masked_loss_sum(tasks.TaskSpec("t", "binary"), logits, y, mask)
    p = _np_sigmoid(logits)
    ref = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert float(s) == pytest.approx(float((ref * mask).sum()), rel=1e-5)
    assert float(c) == mask.sum()

    r = rng.normal(3, 1, size=16).astype(np.float32)
    s, _ = tasks.masked_loss_sum(tasks.TaskSpec("r", "regression"), logits, r, mask)
    assert float(s) == pytest.approx(float((((logits - r) ** 2) * mask).sum()), rel=1e-5)

    logits_c = rng.normal(size=(16, 5)).astype(np.float32)
    labels_c = rng.integers(5, size=16)
    s, _ = tasks.masked_loss_sum(
        tasks.TaskSpec("c", "multiclass", num_classes=5), logits_c, labels_c, mask
    )
    logp = logits_c - np.log(np.exp(logits_c).sum(-1, keepdims=True))
    ref = -logp[np.arange(16), labels_c]
    assert float(s) == pytest.approx(float((ref * mask).sum()), rel=1e-5)


def test_unlabelled_placeholders_do_not_leak_into_gradients():
    task = tasks.TaskSpec("r", "regression")
    labels = jnp.array([1.0, jnp.nan, 3.0])
    mask = jnp.array([1.0, 0.0, 1.0])
    grad = jax.grad(lambda x: tasks.masked_loss_sum(task, x, labels, mask)[0])(jnp.zeros(3))
    np.testing.assert_allclose(grad, [-2.0, 0.0, -6.0])


def test_predictions_by_kind():
    x = jnp.array([0.0, 2.0])
    np.testing.assert_allclose(tasks.predict(tasks.TaskSpec("b", "binary"), x), _np_sigmoid(x))
    np.testing.assert_allclose(tasks.predict(tasks.TaskSpec("r", "regression"), x), x)
    probs = tasks.predict(tasks.TaskSpec("c", "multiclass", 2), x[None])
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_task_spec_errors():
    with pytest.raises(ValueError, match="unknown kind 'ranking'"):
        tasks.TaskSpec("x", "ranking")
    with pytest.raises(ValueError, match="num_classes"):
        tasks.TaskSpec("x", "multiclass")


def _trivial(task, labels, n):
    return tasks.trivial_predictions(task, tasks.label_prior(task, labels), n)


def test_trivial_predictions():
    t = tasks.TaskSpec("c", "multiclass", num_classes=3)
    np.testing.assert_allclose(_trivial(t, np.array([0, 0, 2, 2]), 2)[0], [0.5, 0, 0.5])
    r = tasks.TaskSpec("r", "regression")
    np.testing.assert_allclose(_trivial(r, np.array([1.0, 3.0]), 3), [2.0] * 3)
    b = tasks.TaskSpec("b", "binary")
    np.testing.assert_allclose(_trivial(b, np.array([], np.float32), 2), [0.0] * 2)


def test_label_priors_add_up_chunk_by_chunk():
    """Priors summed over chunks with masks equal the prior of the masked-in labels."""
    rng = np.random.default_rng(0)
    cases = [
        (tasks.TaskSpec("c", "multiclass", num_classes=4), rng.integers(0, 4, 100)),
        (tasks.TaskSpec("m", "multilabel", num_classes=3), rng.integers(0, 2, (100, 3))),
        (tasks.TaskSpec("r", "regression"), rng.normal(3.0, 1.0, 100)),
    ]
    for task, labels in cases:
        masks = rng.random(100) < 0.7
        sums = tasks.LabelPriorSums(task)
        for part in np.array_split(np.arange(100), 7):
            sums.add(labels[part], masks[part].astype(np.float32))
        np.testing.assert_allclose(sums.prior(), tasks.label_prior(task, labels[masks]))
        assert sums.count == masks.sum()


def test_multilabel_loss_and_prior():
    task = tasks.TaskSpec("g", "multilabel", num_classes=3)
    logits = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    s, c = tasks.masked_loss_sum(task, logits, labels, np.array([1.0, 0.0], np.float32))
    p = _np_sigmoid(logits[0])
    ref = -np.mean(labels[0] * np.log(p) + (1 - labels[0]) * np.log(1 - p))
    assert float(s) == pytest.approx(ref, rel=1e-5) and float(c) == 1.0
    prior = _trivial(task, np.array([[1, 0, 0], [1, 1, 0]], float), 2)
    np.testing.assert_allclose(prior, [[1.0, 0.5, 0.0]] * 2)


def test_pos_weight_and_class_weights_match_hand_written_losses():
    from mtl_jax.tasks import TaskSpec, per_example_loss

    logits = jnp.array([0.3, -1.2, 2.0, -0.1])
    labels = jnp.array([1.0, 0.0, 1.0, 0.0])
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    want = -(3.0 * labels * np.log(p) + (1 - labels) * np.log(1 - p))
    got = per_example_loss(TaskSpec("buy", "binary", pos_weight=3.0), logits, labels)
    np.testing.assert_allclose(got, want, rtol=1e-5)

    logits_mc = jnp.array([[0.1, 0.5, -0.3], [1.0, 0.0, 0.2]])
    labels_mc = jnp.array([2, 0])
    log_softmax = np.asarray(logits_mc) - np.log(
        np.exp(np.asarray(logits_mc)).sum(-1, keepdims=True)
    )
    weights = np.array([0.5, 1.0, 4.0])
    want_mc = -log_softmax[[0, 1], [2, 0]] * weights[[2, 0]]
    task = TaskSpec("cat", "multiclass", 3, class_weights=(0.5, 1.0, 4.0))
    np.testing.assert_allclose(per_example_loss(task, logits_mc, labels_mc), want_mc, rtol=1e-5)


def test_loss_options_reject_the_wrong_task_kind():
    from mtl_jax.tasks import TaskSpec

    with pytest.raises(ValueError, match="pos_weight applies to binary and multilabel"):
        TaskSpec("rating", "regression", pos_weight=2.0)
    with pytest.raises(ValueError, match=r"one weight per class \(3\); got 2"):
        TaskSpec("cat", "multiclass", 3, class_weights=(1.0, 2.0))
