"""Guards: a non-finite step is never applied, divergence stops the run, nothing bad is saved."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import checkpoint, guards, parallel
from mtl_jax.data import load_dataset
from mtl_jax.loop import is_better
from mtl_jax.tasks import TaskSpec, evaluate
from mtl_jax.train import Trainer, train_and_evaluate
from tests.helpers import tiny_config


def _guard(max_skipped=2, factor=100.0, window=5, history=None):
    config = guards.default_config()
    config.update(max_skipped_steps=max_skipped, divergence_factor=factor, divergence_window=window)
    return guards.StepGuard(config, lambda: "LAST GOOD", ("a", "b"), history=history)


def test_guard_stops_after_more_than_max_consecutive_skipped_steps():
    guard = _guard(max_skipped=2)
    guard.observe(1, 1.0, True)
    guard.observe(2, float("nan"), False)
    guard.observe(3, float("nan"), False)
    guard.observe(4, 0.9, True)  # an applied step resets the streak
    guard.observe(5, float("inf"), False)
    guard.observe(6, float("nan"), False)
    assert (guard.consecutive_skipped, guard.skipped_steps) == (2, 4)
    with pytest.raises(guards.NonFiniteLossError, match=r"3 consecutive steps up to step 7.*LAST"):
        guard.observe(7, float("nan"), False, np.array([np.nan, 1.0]))


def test_guard_with_zero_max_skipped_stops_at_the_first():
    with pytest.raises(guards.NonFiniteLossError, match="1 consecutive steps up to step 1"):
        _guard(max_skipped=0).observe(1, float("nan"), False)


def test_guard_catches_a_finite_blow_up_against_the_running_median():
    guard = _guard(factor=100.0, window=5)
    for step, loss in enumerate([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0], start=1):
        guard.observe(step, loss, True)
    guard.observe(8, 99.0, True)  # median of (3, 2, 1, 1, 1) is 1: 99 < 100 x 1
    # The window now holds (2, 1, 1, 1, 99): median 1.
    with pytest.raises(guards.TrainingDivergedError, match=r"diverged at step 9: 5e\+32.*a=1e\+32"):
        guard.observe(9, 5e32, True, np.array([1e32, 4e32]))


def test_guard_median_has_a_floor_and_the_rule_can_be_turned_off():
    guard = _guard(factor=10.0)
    guard.observe(1, 1e-7, True)
    guard.observe(2, 5e-3, True)  # 50,000 x the loss before, but under 10 x the 1e-3 floor
    with pytest.raises(guards.TrainingDivergedError):
        guard.observe(3, 0.5, True)
    off = _guard(factor=0.0)
    for step, loss in enumerate([1.0, 1e30, 1e35], start=1):
        off.observe(step, loss, True)


def test_guard_history_round_trip_judges_as_an_uninterrupted_guard():
    losses = [4.0, 3.0, 2.0, 1.0]
    straight = _guard(factor=10.0)
    for step, loss in enumerate(losses, start=1):
        straight.observe(step, loss, step != 2)
    resumed = _guard(factor=10.0, history=straight.history())
    assert resumed.history() == straight.history()
    assert resumed.skipped_steps == 1
    with pytest.raises(guards.TrainingDivergedError):
        resumed.observe(5, 40.0, True)  # median of (4, 2, 1) = 2: 40 > 10 x 2
    assert _guard(factor=10.0).observe(5, 40.0, True) is None  # no history: nothing to judge


def test_guard_judges_each_step_one_step_late_and_flush_judges_the_pending_one():
    guard = _guard(max_skipped=0)
    bad = {"loss": jnp.nan, "applied": jnp.asarray(False), "task_losses": jnp.zeros(2)}
    guard.watch(1, bad)  # pending, not judged yet
    with pytest.raises(guards.NonFiniteLossError, match="up to step 1"):
        guard.flush()


def test_all_finite_matches_numpy():
    tree = {"a": np.ones((3, 2), np.float32), "b": {"c": np.arange(4)}, "d": np.zeros(2)}
    assert bool(guards.all_finite(tree))
    for value in (np.nan, np.inf, -np.inf):
        broken = {**tree, "d": np.array([0.0, value])}
        assert not bool(guards.all_finite(broken))
    assert bool(guards.all_finite({}))


def test_metrics_of_non_finite_predictions_are_nan_and_never_best():
    task = TaskSpec("click", "binary")
    labels = np.array([0.0, 1.0, 0.0, 1.0])
    metrics = evaluate(task, labels, np.array([0.1, np.nan, 0.2, 0.9]))
    assert metrics and all(np.isnan(v) for v in metrics.values())
    assert np.isfinite(evaluate(task, labels, np.array([0.1, 0.8, 0.2, 0.9]))["auc"])
    assert not is_better(metrics["auc"], None, True)
    assert not is_better(metrics["auc"], 0.5, True)


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_a_step_with_a_nan_label_is_not_applied(method):
    """A NaN in a labelled example makes the loss NaN: the step reports applied=False and the
    parameters, optimizer and balancing states are exactly those before it; the next clean
    batch is applied."""
    config = tiny_config()
    config.balancing.method = method
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    clean = next(it)
    # One clean step first: the warmup's first learning rate is 0.
    state, _ = trainer.train_step(state, parallel.to_global_batch(clean, trainer.mesh))
    poisoned = jax.tree.map(np.array, clean)
    name = trainer.tasks[0].name
    poisoned["masks"][name][0] = 1.0
    poisoned["labels"][name][0] = np.nan
    before = jax.device_get(state)
    after, metrics = trainer.train_step(state, parallel.to_global_batch(poisoned, trainer.mesh))
    assert not bool(metrics["applied"]) and not np.isfinite(float(metrics["loss"]))
    after = jax.device_get(after)
    assert int(after.step) == int(before.step) + 1
    chex.assert_trees_all_equal(
        (after.params, after.opt_state, after.balancer),
        (before.params, before.opt_state, before.balancer),
    )
    state = jax.device_put(after, trainer.state_sharding)
    again, metrics = trainer.train_step(state, parallel.to_global_batch(clean, trainer.mesh))
    assert bool(metrics["applied"])
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), jax.device_get(again.params), after.params
    )
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_a_stale_best_checkpoint_from_a_broken_attempt_is_replaced(tmp_path):
    """An earlier attempt left NaN parameters as the best checkpoint of a step after the
    last checkpoint (it diverged, or was killed before checkpointing): the rerun resumes
    before it, discards it, and ends as an uninterrupted run, finite and reportable."""
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=10)
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    workdir = tmp_path / "broken"
    assert train_and_evaluate(config, str(workdir), max_steps_this_run=10) is None
    ckpt = checkpoint.Checkpointer(workdir)
    trainer_params = ckpt.restore_best(None)
    nan_params = jax.tree.map(lambda a: np.full(a.shape, np.nan, a.dtype), trainer_params)
    ckpt.save_best(15, nan_params)
    ckpt.wait()
    assert 15 in ckpt.best_steps()
    ckpt.close()
    resumed = train_and_evaluate(config, str(workdir))
    assert resumed["test"] == straight["test"]
    assert resumed["best_step"] == straight["best_step"]
    assert resumed["skipped_steps"] == 0
    assert straight["best_step"] != 20, (
        "the stale step 15 must matter: pick a config whose best is not the last"
    )
