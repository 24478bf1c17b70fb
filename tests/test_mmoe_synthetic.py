"""The MMoE paper's synthetic generator, and training on dense (embedding-free) inputs."""

import jax
import numpy as np
import pytest

from mtl_jax import configlib, parallel
from mtl_jax.data import load_dataset
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
