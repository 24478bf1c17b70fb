"""Knowledge distillation: the soft-target loss in closed form, the teacher restored from an
earlier run's Orbax checkpoint, and a student pulled toward the teacher's predictions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import checkpoint, parallel, tasks
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, train_and_evaluate
from tests.helpers import tiny_config


def test_soft_target_losses_in_closed_form():
    s, t, temp = jnp.array([0.5, -1.0]), jnp.array([2.0, 0.0]), 2.0
    binary = tasks.TaskSpec("click", "binary")
    expected = optax.sigmoid_binary_cross_entropy(s / temp, jax.nn.sigmoid(t / temp)) * temp**2
    np.testing.assert_allclose(tasks.distillation_loss(binary, s, t, temp), expected, rtol=1e-6)
    regression = tasks.TaskSpec("rating", "regression")
    np.testing.assert_allclose(tasks.distillation_loss(regression, s, t, temp), (s - t) ** 2)
    multiclass = tasks.TaskSpec("category", "multiclass", num_classes=3)
    s3, t3 = jnp.array([[1.0, 0.0, -1.0]]), jnp.array([[0.0, 2.0, 0.0]])
    p = jax.nn.softmax(t3 / temp)
    expected = -jnp.sum(p * jax.nn.log_softmax(s3 / temp), axis=-1) * temp**2
    np.testing.assert_allclose(
        tasks.distillation_loss(multiclass, s3, t3, temp), expected, rtol=1e-6
    )
    # At its minimum the soft loss has zero gradient: the student matching the teacher.
    grad = jax.grad(lambda x: tasks.distillation_loss(binary, x, t, temp).sum())(t)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


@pytest.mark.slow
def test_student_learns_the_teachers_predictions(tmp_path):
    teacher_config = tiny_config(num_steps=40, eval_every=10, checkpoint_every=10)
    teacher_config.model.update(num_experts=8, trunk_hidden=(64,))
    train_and_evaluate(teacher_config, str(tmp_path / "teacher"))

    def student(alpha):
        config = tiny_config(num_steps=40)
        config.model.update(trunk="shared_bottom", trunk_hidden=(8,), tower_hidden=(4,))
        config.distill.update(teacher_workdir=str(tmp_path / "teacher"), alpha=alpha)
        dataset = load_dataset(config.data, config.seed)
        trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
        state, it = trainer.init_state(), trainer.train_iterator()
        for _ in range(config.train.num_steps):
            state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
        return trainer, state, dataset

    trainer, state, dataset = student(alpha=1.0)
    # The teacher is the earlier run's best checkpoint, unchanged by the student's training.
    ckpt = checkpoint.Checkpointer(tmp_path / "teacher")
    best = ckpt.restore_best(trainer.teacher.abstract_state.params)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.teacher), jax.device_get(best))

    teacher_p, _ = trainer.teacher.predict(state.teacher, dataset.test)
    distilled_p, _ = trainer.predict(state.params, dataset.test)
    trainer0, state0, _ = student(alpha=0.0)
    plain_p, _ = trainer0.predict(state0.params, dataset.test)
    for task in ("click", "rating"):
        gap_distilled = np.abs(distilled_p[task] - teacher_p[task]).mean()
        gap_plain = np.abs(plain_p[task] - teacher_p[task]).mean()
        assert gap_distilled < gap_plain, (task, gap_distilled, gap_plain)


def test_missing_teacher_is_named(tmp_path):
    config = tiny_config()
    config.distill.teacher_workdir = str(tmp_path / "nowhere")
    dataset = load_dataset(config.data, config.seed)
    with pytest.raises(FileNotFoundError, match="has no config.json; train the teacher"):
        Trainer(config, dataset, mesh=parallel.make_mesh(1))
