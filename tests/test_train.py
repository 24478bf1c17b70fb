"""End-to-end training: learning happens, data parallelism is exact, resume is exact."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import balancing, checkpoint, loop, parallel
from mtl_jax.checkpoint import IncompatibleCheckpointError
from mtl_jax.configlib import ConfigError
from mtl_jax.data import load_dataset
from mtl_jax.guards import NonFiniteLossError
from mtl_jax.models import TRUNKS
from mtl_jax.train import (
    Trainer,
    make_train_step,
    task_loss_sums,
    train_and_evaluate,
)
from tests.helpers import tiny_config


def _train_params(config, dataset, mesh, steps):
    trainer = Trainer(config, dataset, mesh=mesh)
    state = trainer.init_state()
    it = trainer.train_iterator()
    for _ in range(steps):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    return jax.device_get(state.params)


@pytest.mark.parametrize(
    "trunk, method",
    [  # mmoe with ew and pcgrad: tests/test_parallel.py (meshes 8x1, 4x2, 2x4); mgda takes
        # the same Gramian path as upgrad
        ("shared_bottom", "ew"),
        ("mmoe", "upgrad"),
        ("mmoe", "upgrad:experts/kernel_0$"),
    ],
)
def test_eight_devices_equal_one_device(trunk, method):
    """Same global batch on 1 or 8 devices: same parameters (gradient methods see the Gramian
    of the global batch, so every device takes the same combined step)."""
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    config = tiny_config()
    config.model.trunk = trunk
    config.balancing.method, _, config.balancing.gramian_params = method.partition(":")
    dataset = load_dataset(config.data, config.seed)
    one = _train_params(config, dataset, parallel.make_mesh(1), 20)
    eight = _train_params(config, dataset, parallel.make_mesh(8), 20)
    # Float reassociation of the 8-way reductions (the Gramian solver amplifies it a little).
    chex.assert_trees_all_close(eight, one, rtol=1e-5, atol=1e-6)
    # Training moved every parameter: the comparison above is not of two initialisations.
    init = jax.device_get(Trainer(config, dataset, mesh=parallel.make_mesh(1)).init_state().params)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), init, one)
    assert min(jax.tree.leaves(moved)) > 1e-4, moved


@pytest.mark.parametrize("mode", ["batched", "sequential", "stacked"])
@pytest.mark.parametrize("whole_model", [False, True])
def test_gradient_path_equals_loss_path_for_fixed_weights(whole_model, mode):
    """The per-task-vjp path (T backward passes for the trunk's task gradients; heads and
    input from one more backward when batched, from the same T passes' weighted sums when
    sequential) with fixed weights w must reproduce one backward of a weighted loss:
    sum_t w_t L_t when the weights scale the whole model (as GradNorm's do), else the trunk
    by w and the rest by the plain sum."""
    config = tiny_config()
    config.model.dropout = 0.0
    config.model.trunk_hidden = (16, 8)  # a hidden expert layer too (stacked's two cases)
    dataset = load_dataset(config.data, config.seed)
    mesh = parallel.make_mesh(1)
    trainer = Trainer(config, dataset, mesh=mesh)
    w = jnp.asarray([0.5, 2.0, 1.0, 3.0])
    fixed_rule = balancing.WeightingRule(
        "fixed",
        True,
        False,
        lambda t: jnp.zeros((t,)),
        lambda s, losses, g, k: (w, s),
        weights_whole_model=whole_model,
    )
    sgd = optax.sgd(1.0)  # the update is minus the gradient (Adam's first would be its sign)
    gradient_step = jax.jit(
        make_train_step(trainer.model, trainer.tasks, sgd, fixed_rule, task_gradients=mode)
    )
    batch = parallel.to_global_batch(next(trainer.train_iterator()), mesh)
    state = trainer.init_state()
    state = state.replace(opt_state=sgd.init(state.params))
    new_state, metrics = gradient_step(jax.tree.map(jnp.copy, state), batch)
    assert "gram" in metrics

    def weighted_loss(params, weights):
        logits = trainer.model.apply({"params": params}, batch["features"], train=True)
        sums, counts = task_loss_sums(trainer.tasks, logits, batch)
        return jnp.sum(weights * sums / jnp.maximum(counts, 1.0))

    grad = jax.jit(jax.grad(weighted_loss))
    trunk_grads = grad(state.params, w)
    rest_grads = trunk_grads if whole_model else grad(state.params, jnp.ones_like(w))
    expected = {**rest_grads, "trunk": trunk_grads["trunk"]}
    got = jax.tree.map(jnp.subtract, state.params, new_state.params)
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "gradnorm"])
def test_scoped_gramian_step_matches_per_task_reference(method):
    """``gramian_params``: weights from the Gramian of the chosen trunk layer's per-task
    gradients, the whole trunk stepped by ``sum_t w_t g_t``; embeddings and heads by the plain
    sum (or by the weights too, for GradNorm). Reference: T separate ``jax.grad`` calls."""
    config = tiny_config()
    config.model.dropout = 0.0
    config.model.trunk_hidden = (16, 8)
    config.balancing.method = method
    config.balancing.gramian_params = "experts/(kernel|bias)_1$"
    dataset = load_dataset(config.data, config.seed)
    mesh = parallel.make_mesh(1)
    trainer = Trainer(config, dataset, mesh=mesh)
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), mesh)
    new_state, metrics = jax.jit(
        make_train_step(
            trainer.model, trainer.tasks, trainer.tx, trainer.rule, "experts/(kernel|bias)_1$"
        )
    )(state, batch)

    def task_loss(params, t):
        logits = trainer.model.apply({"params": params}, batch["features"], train=True)
        sums, counts = task_loss_sums(trainer.tasks, logits, batch)
        return sums[t] / jnp.maximum(counts[t], 1.0)

    num_tasks = len(trainer.tasks)
    grad_fn = jax.jit(jax.value_and_grad(task_loss))  # t traced: one program for all tasks
    values_and_grads = [grad_fn(state.params, t) for t in range(num_tasks)]
    losses = jnp.stack([v for v, _ in values_and_grads])
    per_task = [g for _, g in values_and_grads]
    scoped = [{k: g["trunk"]["experts"][k] for k in ("kernel_1", "bias_1")} for g in per_task]
    gram = np.array([[sum(float(jnp.vdot(a[k], b[k])) for k in a) for b in scoped] for a in scoped])
    np.testing.assert_allclose(metrics["gram"], gram, rtol=1e-4, atol=1e-9)
    weights, _ = balancing.compute_weights(trainer.rule, state.balancer, losses, jnp.asarray(gram))
    np.testing.assert_allclose(metrics["weights"], weights, rtol=1e-4, atol=1e-6)
    other = weights if method == "gradnorm" else jnp.ones((num_tasks,))
    expected = {
        group: jax.tree.map(
            lambda *gs, w=(weights if group == "trunk" else other): sum(
                wt * g for wt, g in zip(w, gs, strict=True)
            ),
            *[g[group] for g in per_task],
        )
        for group in state.params
    }
    # Jitted: op by op, the partitioned optimizer's update is ~10 s of small compiles.
    updates, _ = jax.jit(trainer.tx.update)(expected, state.opt_state, state.params)
    chex.assert_trees_all_close(
        new_state.params, optax.apply_updates(state.params, updates), rtol=2e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    "trunk, method",
    # PLE, like MMoE, hands each tower its own mixture; GradNorm also weights the towers.
    [("shared_bottom", "gradnorm"), ("mmoe", "pcgrad"), ("mmoe+esmm", "upgrad")],
)
def test_representation_gramian_step_matches_per_task_reference(trunk, method):
    """``gramian_at='representation'``: the Gramian of each task's gradient at the trunk's
    output (summed over the T representations: the shared tensor for Shared-Bottom, the
    task's own mixture for MMoE/PLE, and with ESMM the CTR tower's too for CTCVR);
    embeddings and trunk stepped by ``sum_t w_t g_t``, the towers by the plain sum (by the
    weights for GradNorm). Reference: T ``jax.grad`` calls."""
    config = tiny_config()
    trunk, esmm = trunk.removesuffix("+esmm"), trunk.endswith("+esmm")
    config.model.update(trunk=trunk, dropout=0.0, trunk_hidden=(16, 8))
    if esmm:
        config.model.update(esmm_ctr_task="click", esmm_ctcvr_task="purchase")
    config.balancing.update(method=method, gramian_at="representation")
    dataset = load_dataset(config.data, config.seed)
    mesh = parallel.make_mesh(1)
    trainer = Trainer(config, dataset, mesh=mesh)
    state = trainer.init_state()
    batch = parallel.to_global_batch(next(trainer.train_iterator()), mesh)
    new_state, metrics = trainer.train_step(jax.tree.map(jnp.copy, state), batch)  # donated
    model, tasks, num_tasks = trainer.model, trainer.tasks, len(trainer.tasks)

    def task_loss(params, t):
        logits = model.apply({"params": params}, batch["features"], train=True)
        sums, counts = task_loss_sums(tasks, logits, batch)
        return sums[t] / jnp.maximum(counts[t], 1.0)

    def loss_at_reps(reps, t):
        logits = model.apply({"params": state.params}, reps, method=model.heads, train=True)
        sums, counts = task_loss_sums(tasks, logits, batch)
        return sums[t] / jnp.maximum(counts[t], 1.0)

    reps = jax.jit(
        lambda params: model.apply(
            {"params": params},
            batch["features"],
            method=lambda m, f: m.represent(m.embed(f, train=True), train=True),
        )
    )(state.params)
    rep_grad = jax.jit(jax.grad(loss_at_reps))  # t traced: one program for all tasks
    rep_grads = np.stack([np.asarray(sum(rep_grad(reps, t))).ravel() for t in range(num_tasks)])
    gram = rep_grads @ rep_grads.T
    np.testing.assert_allclose(metrics["gram"], gram, rtol=1e-4, atol=1e-9)
    if trunk == "shared_bottom":  # one shared tensor: the Gramian is not diagonal
        assert abs(gram[0, 1]) > 1e-3 * np.sqrt(gram[0, 0] * gram[1, 1])
    grad_fn = jax.jit(jax.value_and_grad(task_loss))  # t traced: one program for all tasks
    values_and_grads = [grad_fn(state.params, t) for t in range(num_tasks)]
    losses = jnp.stack([v for v, _ in values_and_grads])
    weights, _ = balancing.compute_weights(trainer.rule, state.balancer, losses, jnp.asarray(gram))
    np.testing.assert_allclose(metrics["weights"], weights, rtol=1e-4, atol=1e-6)
    if method != "gradnorm":  # GradNorm starts from ones and learns its weights
        assert float(jnp.std(weights)) > 1e-3, weights  # not the plain sum in disguise
    towers = weights if method == "gradnorm" else jnp.ones((num_tasks,))
    expected = {
        group: jax.tree.map(
            lambda *gs, w=(weights if group in ("embedding", "trunk") else towers): sum(
                wt * g for wt, g in zip(w, gs, strict=True)
            ),
            *[g[group] for _, g in values_and_grads],
        )
        for group in state.params
    }
    updates, _ = jax.jit(trainer.tx.update)(expected, state.opt_state, state.params)
    chex.assert_trees_all_close(
        new_state.params, optax.apply_updates(state.params, updates), rtol=2e-4, atol=1e-6
    )


def test_scoped_gramian_rejects_a_pattern_that_matches_nothing():
    config = tiny_config()
    config.balancing.method = "mgda"
    config.balancing.gramian_params = "no_such_layer"
    dataset = load_dataset(config.data, config.seed)
    with pytest.raises(ValueError, match="matches no trunk parameter.*experts/kernel_0"):
        Trainer(config, dataset, mesh=parallel.make_mesh(1))
    config.balancing.method = "ew"
    with pytest.raises(ValueError, match="gramian_params: only Gramian-based"):
        Trainer(config, dataset, mesh=parallel.make_mesh(1))


@pytest.mark.parametrize("method", balancing.names())
def test_every_method_trains_without_nan(method):
    config = tiny_config(num_steps=8)
    config.balancing.method = method
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    for _ in range(8):
        state, metrics = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    host = jax.device_get(metrics)
    assert np.isfinite(host["loss"]) and np.all(np.isfinite(host["weights"]))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


@pytest.mark.parametrize("trunk", TRUNKS)
def test_every_trunk_trains(trunk):
    """Every trunk on the e-commerce smoke data, under a gradient method too (its Gramian is
    over whatever parameters the trunk has): finite, and the training loss falls."""
    config = tiny_config(num_steps=30)
    config.model.trunk = trunk
    config.balancing.method = "upgrad"
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    it = trainer.train_iterator()
    losses = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_batch_must_divide_over_devices():
    config = tiny_config(batch_size=60)
    dataset = load_dataset(config.data, config.seed)
    with pytest.raises(ValueError, match="batch_size 60 does not divide over 8 devices"):
        Trainer(config, dataset, mesh=parallel.make_mesh(8))


@pytest.mark.slow
def test_train_and_evaluate_writes_results_and_learns(tmp_path):
    config = tiny_config(num_steps=60, eval_every=20, checkpoint_every=20)
    config.data.update(num_users=300, num_items=150, num_impressions=20_000)
    results = train_and_evaluate(config, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"] == results["test"]
    assert saved["dataset_sizes"] == {"train": 16000, "validation": 2000, "test": 2000}
    assert json.loads((tmp_path / "config.json").read_text())["model"]["trunk"] == "mmoe"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation"}
    # Real learning after 60 small steps: clearly better than the label-blind predictor.
    test, trivial = results["test"], results["trivial"]
    assert test["click"]["auc"] > 0.55
    assert test["click"]["logloss"] < trivial["click"]["logloss"]
    assert test["category"]["accuracy"] > trivial["category"]["accuracy"] + 0.1
    assert results["oracle"]["click"]["auc"] > test["click"]["auc"]
    # Rerunning a finished workdir re-reports the same numbers without training, and keeps
    # what the training run measured and which code trained it.
    assert results["trained_commits"] == [results["commit"]]
    again = train_and_evaluate(config, str(tmp_path))
    assert again["test"] == results["test"]
    for key in ("trained_commits", "wall_time_s", "train_examples_per_s", "median_step_ms"):
        assert again[key] == results[key], key


@pytest.mark.slow
@pytest.mark.parametrize("method", ["famo", "dwa", "gradnorm", "db_mtl", "pcgrad", "nash_mtl"])
def test_resume_is_exact(tmp_path, method):
    """2N steps straight == N steps, stop, resume for N: same params, data order, metrics,
    with each kind of balancing state (FAMO's logits and loss history, DWA's windows,
    GradNorm's learned weights, DB-MTL's gradient averages, PCGrad's key, Nash-MTL's warm
    start; GradVac's targets and UW's weights are optimizer state and parameters like
    these), across epoch boundaries of the data (an epoch is about 8 steps here, so the
    split at step 8 and the run cross two)."""
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=5, log_every=1)
    config.data.num_impressions = 700
    config.balancing.method = method
    if method == "dwa":
        config.balancing.period = 3  # windows close before and after the split
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert train_and_evaluate(config, str(tmp_path / "split"), max_steps_this_run=8) is None
    resumed = train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed["test"] == straight["test"]
    assert resumed["best_step"] == straight["best_step"]

    def train_losses(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]

    # Same losses at every step after the resume point means the same batches in the same order.
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "straight")

    trainer = Trainer(config, load_dataset(config.data, config.seed), mesh=parallel.make_mesh(1))

    def final_state(workdir):
        ckpt = checkpoint.Checkpointer(workdir)
        state, _ = ckpt.restore(
            ckpt.latest_step(), trainer.abstract_state, trainer.train_iterator()
        )
        ckpt.close()
        return jax.device_get((state.params, state.balancer))

    chex.assert_trees_all_equal(final_state(tmp_path / "split"), final_state(tmp_path / "straight"))


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    """The newest checkpoint's files are cut short (a full disk, an interrupted copy): the
    rerun sets it aside, resumes from the previous one, and ends as an uninterrupted run."""
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=5)
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    workdir = tmp_path / "damaged"
    assert train_and_evaluate(config, str(workdir), max_steps_this_run=12) is None
    ckpt_dir = workdir / "checkpoints"
    assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [10, 12]
    state_files = [p for p in (ckpt_dir / "12" / "state").rglob("*") if p.is_file()]
    assert state_files
    for path in state_files:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    resumed = train_and_evaluate(config, str(workdir))
    assert (ckpt_dir / "12.damaged").is_dir(), "the damaged checkpoint is kept, set aside"
    assert resumed["test"] == straight["test"]
    assert resumed["best_step"] == straight["best_step"]


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused(tmp_path):
    config = tiny_config(num_steps=10, eval_every=5, checkpoint_every=5)
    assert train_and_evaluate(config, str(tmp_path), max_steps_this_run=5) is None
    config.model.trunk_hidden = (16,)
    with pytest.raises(
        IncompatibleCheckpointError, match=r"model.trunk_hidden: checkpoint=\[32\] now=\[16\]"
    ):
        train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_divergence_stops_with_last_good_checkpoint_intact(tmp_path, monkeypatch):
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=5)
    assert train_and_evaluate(config, str(tmp_path), max_steps_this_run=10) is None
    # Resume with a learning rate that sends the parameters to infinity: every step's
    # update overflows, none is applied, and the fourth in a row stops the run.
    config.optim.learning_rate = 1e30
    config.guards.max_skipped_steps = 3
    monkeypatch.setattr(
        checkpoint,
        "RESUMABLE_KEYS",
        (*checkpoint.RESUMABLE_KEYS, "optim.learning_rate"),
    )
    with pytest.raises(
        NonFiniteLossError, match=r"4 consecutive steps up to step 14.*\(step 10\) is intact"
    ):
        train_and_evaluate(config, str(tmp_path))
    ckpt = checkpoint.Checkpointer(tmp_path)
    assert ckpt.latest_step() == 10
    assert max(ckpt.best_steps()) <= 10
    ckpt.close()


def test_compile_only_reports_per_device_memory_that_shrinks_with_data_parallelism():
    from mtl_jax.aot import compile_train_step

    config = tiny_config(batch_size=256)
    one = compile_train_step(config, 1)
    eight = compile_train_step(config, 8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert one["params"] == eight["params"] > 0
    # Parameters and optimizer state are replicated, activations are split over the batch.
    assert eight["arguments_mib"] < one["arguments_mib"]
    assert eight["temporaries_mib"] < one["temporaries_mib"]


def test_compile_only_row_sharded_tables_shrink_per_device_state():
    """A 64k-row user table (8 MiB, plus Adagrad's 8 MiB copy): on a 2x4 mesh each device
    holds a quarter of both, on 8x1 all of both."""
    from mtl_jax.aot import compile_train_step

    config = tiny_config(batch_size=256)
    config.data.num_users = 64_000
    config.model.embed_dim = 32
    data_parallel = compile_train_step(config, 8, model=1)
    row_sharded = compile_train_step(config, 8, model=4)
    assert row_sharded["mesh"] == {"data": 2, "model": 4}
    table_mib = 64_000 * 32 * 4 / 2**20
    saved = data_parallel["arguments_mib"] - row_sharded["arguments_mib"]
    assert saved == pytest.approx(2 * table_mib * 3 / 4, rel=0.05)


@pytest.mark.parametrize("mode", ["sequential", "stacked"])
def test_task_gradient_modes_equal_batched(mode):
    """balancing.task_gradients only changes how the per-task trunk gradients are formed."""
    config = tiny_config()
    config.balancing.method = "pcgrad"
    config.model.dropout = 0.0  # stacked computes the MMoE trunk without dropout
    dataset = load_dataset(config.data, config.seed)
    mesh = parallel.make_mesh(1)
    config.balancing.task_gradients = "batched"
    batched = _train_params(config, dataset, mesh, 5)
    config.balancing.task_gradients = mode
    other = _train_params(config, dataset, mesh, 5)
    chex.assert_trees_all_close(other, batched, rtol=1e-5, atol=1e-6)


def test_steps_per_dispatch_that_divides_no_cadence_lands_on_every_one(tmp_path, monkeypatch):
    """train.steps_per_dispatch=3 (a lax.scan over 3 stacked batches per call) divides none
    of log_every=4, eval_every=8, num_steps=14 nor a stop after 5 steps: the loop runs
    single steps where 3 would overshoot, so it logs, validates and stops on the same steps,
    with the same losses, as one step per call; a run stopped at step 5 (no multiple of 3)
    resumes with K=3 and ends where the straight one does."""
    config = tiny_config(num_steps=14, eval_every=8, checkpoint_every=8, log_every=4)
    config.balancing.method = "pcgrad"  # the balancer's state and PRNG key go through scan
    one = train_and_evaluate(config, str(tmp_path / "one"))
    config.train.steps_per_dispatch = 3
    sizes = []
    dispatch_size = loop.TrainingLoop._dispatch_size
    monkeypatch.setattr(
        loop.TrainingLoop,
        "_dispatch_size",
        lambda self: sizes.append(dispatch_size(self)) or sizes[-1],
    )
    three = train_and_evaluate(config, str(tmp_path / "three"))
    # 0-3 in one call, 3-4 single (log), 4-7 in one, 7-8 single (log, validate), ...
    assert sizes == [3, 1, 3, 1, 3, 1, 1, 1]
    assert train_and_evaluate(config, str(tmp_path / "split"), max_steps_this_run=5) is None
    split = train_and_evaluate(config, str(tmp_path / "split"))

    def logged(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [(r["split"], r["step"], r.get("loss")) for r in map(json.loads, lines)]

    expected = logged(tmp_path / "one")
    assert [(s, step) for s, step, _ in expected if s == "train"] == [
        ("train", 4), ("train", 8), ("train", 12), ("train", 14)
    ]  # fmt: skip
    for name in ("three", "split"):
        got = logged(tmp_path / name)
        assert [(s, step) for s, step, _ in got] == [(s, step) for s, step, _ in expected]
        losses = [v for s, _, v in got if s == "train"]
        np.testing.assert_allclose(losses, [v for s, _, v in expected if s == "train"], rtol=1e-5)
    for results in (three, split):
        assert results["best_step"] == one["best_step"]
        for task, metrics in one["test"].items():
            for metric, value in metrics.items():
                assert results["test"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_results_hold_gauc_and_threshold_metrics_of_binary_tasks(tmp_path):
    config = tiny_config(num_steps=5, eval_every=5, checkpoint_every=5, log_every=5)
    config.metrics.threshold = 0.3
    results = train_and_evaluate(config, str(tmp_path / "a"))
    binary = results["test_binary"]
    assert set(binary) == {"click", "purchase"}  # the binary tasks only
    for values in binary.values():
        assert set(values) == {"gauc", "precision@0.3", "recall@0.3", "f1@0.3"}
        assert 0.0 <= values["gauc"] <= 1.0
    config.metrics.gauc_group = ""
    assert "gauc" not in train_and_evaluate(config, str(tmp_path / "b"))["test_binary"]["click"]
    config.metrics.gauc_group = "usr_id"
    with pytest.raises(ConfigError, match="metrics.gauc_group: unknown feature 'usr_id'"):
        train_and_evaluate(config, str(tmp_path / "c"))
