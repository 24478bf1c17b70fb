"""The MMoE paper's synthetic generator, and training on dense (embedding-free) inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mtl_jax import configlib, parallel
from mtl_jax.data import load_dataset
from mtl_jax.data import mmoe_synthetic as synthetic
from mtl_jax.data.mmoe_synthetic import (
    label_correlation,
    noiseless_label,
    simulate_mmoe_synthetic,
    task_weights,
)
from mtl_jax.models import TRUNKS
from mtl_jax.train import Trainer


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5, -0.3])
def test_task_weights_have_the_set_cosine_and_scale(p):
    w1, w2 = task_weights(50, p, 2.0, np.random.default_rng(0))
    assert np.linalg.norm(w1) == pytest.approx(2.0) and np.linalg.norm(w2) == pytest.approx(2.0)
    assert w1 @ w2 / 4.0 == pytest.approx(p)


def test_labels_follow_the_papers_formula():
    ds = simulate_mmoe_synthetic(correlation=0.7, num_train=3000, num_validation=10, num_test=10,
                                 dim=20, noise_std=0.05, seed=3)  # fmt: skip
    x = ds.train.features["x"].astype(np.float64)
    # Rebuild the oracle from the documented recipe: alpha, beta from shape_seed=0, the
    # task weights from the data seed, then z + sum_i sin(alpha_i z + beta_i).
    rng = np.random.default_rng(0)
    alpha, beta = rng.normal(size=10), rng.normal(size=10)
    w1, _ = task_weights(20, 0.7, 1.0, np.random.default_rng(3))
    np.testing.assert_allclose(
        ds.train.oracle["y1"], noiseless_label(x, w1, alpha, beta).astype(np.float32),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    noise = ds.train.labels["y1"] - ds.train.oracle["y1"]
    assert noise.std() == pytest.approx(0.05, rel=0.1) and abs(noise.mean()) < 0.01


def test_label_correlation_falls_with_the_weight_cosine():
    corr = [
        label_correlation(simulate_mmoe_synthetic(correlation=p, num_train=4000, seed=1))
        for p in (1.0, 0.9, 0.5)
    ]
    assert corr[0] > corr[1] > corr[2]


@pytest.mark.parametrize(
    "trunk, method", [*((t, "ew") for t in TRUNKS if t != "mmoe"), ("mmoe", "mgda")]
)
def test_dense_inputs_train_without_embedding_tables(trunk, method):
    config = configlib.load_config_file("configs/mmoe_synthetic.py:smoke")
    config.model.trunk = trunk
    config.balancing.method = method
    dataset = load_dataset(config.data, config.seed)
    trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
    state = trainer.init_state()
    assert "embedding" not in state.params
    before = trainer.evaluate(state.params, dataset.validation)
    it = trainer.train_iterator()
    for _ in range(60):
        state, _ = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    after = trainer.evaluate(jax.device_get(state.params), dataset.validation)
    assert after["y1"]["rmse"] < before["y1"]["rmse"]


# --- The JAX generator and the vmapped-seeds runner of experiments/mmoe_synthetic.py ------


def _experiment_module():
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "mmoe_synthetic.py"
    spec = importlib.util.spec_from_file_location("mmoe_synthetic_experiment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment():
    return _experiment_module()


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_jax_problems_follow_the_papers_formula(p):
    problem = synthetic.draw_problem(jax.random.PRNGKey(4), dim=12, num_sines=6, alpha_std=2.0)
    w = np.asarray(synthetic.problem_weights(problem, p, 1.5))
    assert np.linalg.norm(w, axis=0) == pytest.approx([1.5, 1.5], rel=1e-5)
    assert w[:, 0] @ w[:, 1] / 1.5**2 == pytest.approx(p, abs=1e-5)
    idx = jnp.arange(3000)
    examples = jax.jit(synthetic.examples, static_argnums=(2, 3, 4))  # (eager vmap: slow)
    x, noisy, clean = examples(problem, idx, p, 1.5, 0.2)
    alpha, beta = np.asarray(problem["alpha"]), np.asarray(problem["beta"])
    x64 = np.asarray(x, np.float64)
    for k, t in enumerate(("y1", "y2")):
        expected = noiseless_label(x64, w[:, k].astype(np.float64), alpha, beta)
        np.testing.assert_allclose(clean[t], expected, rtol=1e-4, atol=1e-4)
        noise = np.asarray(noisy[t] - clean[t])
        assert noise.std() == pytest.approx(0.2, rel=0.1) and abs(noise.mean()) < 0.02
    # Example i is the same array whichever batch asks for it: a fixed training set.
    x_again, noisy_again, _ = examples(problem, jnp.array([2999, 7]), p, 1.5, 0.2)
    np.testing.assert_array_equal(x_again, x[jnp.array([2999, 7])])
    # (labels to float rounding: a matmul over 2 rows may sum in another order than over 3000)
    np.testing.assert_allclose(noisy_again["y2"], noisy["y2"][jnp.array([2999, 7])], atol=1e-5)


@pytest.mark.slow
def test_vmapped_seeds_train_each_seed_as_it_would_alone(experiment):
    protocol = experiment.Protocol(
        steps=30, batch_size=16, train_examples=512, test_examples=128, curve_every=15,
        num_experts=2, expert_units=4,
    )  # fmt: skip
    runner = experiment.SeedsRunner("mmoe", 0.5, 1.0, protocol)
    together = runner.run(np.array([0, 3, 5]), progress=lambda step: None)
    alone = runner.run(np.array([3]), progress=lambda step: None)
    assert together["steps"] == [0, 15, 30]
    assert together["test_loss"].shape == (3, 3)
    np.testing.assert_allclose(together["test_loss"][:, 1], alone["test_loss"][:, 0], rtol=2e-4)
    # Seeds are different problems and initialisations, and training lowers the test loss.
    assert len(set(np.round(together["test_loss"][0], 5))) == 3
    assert np.all(together["test_loss"][-1] < together["test_loss"][0])


def test_paired_analysis_matches_a_direct_computation(experiment):
    rng = np.random.default_rng(0)
    curves = {
        m: {c: {"test_loss": rng.uniform(0.1, 1.0, size=(4, 6))} for c in ("1.0", "0.5")}
        for m in ("mmoe", "shared_bottom")
    }
    block = dict(curves)
    experiment.analyse(block, ["mmoe", "shared_bottom"], ["1.0", "0.5"])
    a, b = curves["mmoe"]["0.5"]["test_loss"][-1], curves["shared_bottom"]["0.5"]["test_loss"][-1]
    got = block["paired"]["final"]["mmoe - shared_bottom"]["0.5"]
    assert got["mean"] == pytest.approx(np.mean(a - b))
    half = stats.t.ppf(0.975, 5) * np.std(a - b, ddof=1) / np.sqrt(6)
    assert got["high"] - got["mean"] == pytest.approx(half)
    assert got["a_lower"] == int(np.sum(a < b)) and got["seeds"] == 6
    mean_of = {
        m: {c: curves[m][c]["test_loss"][1:].mean(0) for c in ("1.0", "0.5")}
        for m in ("mmoe", "shared_bottom")
    }
    change = (mean_of["mmoe"]["0.5"] - mean_of["shared_bottom"]["0.5"]) - (
        mean_of["mmoe"]["1.0"] - mean_of["shared_bottom"]["1.0"]
    )
    trend = block["trend"]["curve_mean"]["mmoe - shared_bottom"]
    assert trend["mean"] == pytest.approx(change.mean())
    assert trend["a_lower"] == int(np.sum(change < 0))
