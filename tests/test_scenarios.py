"""The news and social simulators: determinism, calibrated rates, the biases they promise,
the correlation knob, and every trunk training on each."""

import numpy as np
import pytest

from mtl_jax import configlib, parallel
from mtl_jax.data import load_dataset
from mtl_jax.data.news import simulate_news
from mtl_jax.data.simulation import correlated_scores
from mtl_jax.data.social import simulate_social
from mtl_jax.models import TRUNKS
from mtl_jax.train import Trainer, train_and_evaluate

SMALL = dict(num_users=800, num_items=600, num_impressions=60_000)


def test_correlated_scores_set_the_correlation():
    rng = np.random.default_rng(0)
    own = {t: rng.normal(size=200_000) for t in ("a", "b", "c")}
    for rho in (0.0, 0.5, 0.9):
        z = correlated_scores(own, "a", rho)
        np.testing.assert_array_equal(z["a"], own["a"])
        assert np.corrcoef(z["a"], z["b"])[0, 1] == pytest.approx(rho, abs=0.01)
        assert np.var(z["c"]) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="task_correlation must lie in"):
        correlated_scores(own, "a", 1.5)


@pytest.mark.parametrize("simulate", [simulate_news, simulate_social])
def test_simulators_are_deterministic_and_calibrated(simulate):
    a, b = simulate(**SMALL, seed=4), simulate(**SMALL, seed=4)
    for name in a.train.labels:
        np.testing.assert_array_equal(a.train.labels[name], b.train.labels[name])
    assert a.item_text == b.item_text and len(a.item_text) == 600
    # Labels are draws from the oracle probabilities: their means agree.
    for name, p in a.train.oracle.items():
        if a.train.masks[name].min() == 1 and name != "dwell":
            assert a.train.labels[name].mean() == pytest.approx(p.mean(), rel=0.1)


def test_news_has_position_bias_and_dwell_only_for_clicks():
    ds = simulate_news(**SMALL, seed=1)
    rates = [ds.train.labels["click"][ds.train.features["position"] == p].mean() for p in range(10)]
    assert rates[0] > 2 * rates[3] > 0 and rates[3] > rates[9]
    assert ds.train.labels["click"].mean() == pytest.approx(0.08, rel=0.1)
    np.testing.assert_array_equal(ds.train.masks["dwell"], ds.train.labels["click"])


def test_social_shares_are_rare_and_rates_follow_the_config():
    ds = simulate_social(**SMALL, seed=2, share_rate=0.003)
    rates = {t: ds.train.labels[t].mean() for t in ("like", "comment", "share", "follow")}
    assert rates["share"] < 0.01
    assert rates["like"] == pytest.approx(0.05, rel=0.1)
    assert rates["like"] > rates["comment"] > rates["share"]


def test_higher_task_correlation_makes_interactions_more_correlated():
    def corr(rho):
        ds = simulate_social(**SMALL, seed=3, task_correlation=rho)
        return np.corrcoef(ds.train.oracle["like"], ds.train.oracle["comment"])[0, 1]

    assert corr(0.9) > corr(0.2) + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["news", "social"])
def test_trunks_train_on_the_scenario(scenario):
    """The default MMoE and the two most structured trunks on the scenario's task kinds
    (every trunk is also stepped on MovieLens and trained on e-commerce elsewhere)."""
    config = configlib.load_config_file(f"configs/{scenario}.py:smoke")
    dataset = load_dataset(config.data, config.seed)
    for trunk in ("mmoe", "ple", "cross_stitch"):
        assert trunk in TRUNKS
        config.model.trunk = trunk
        trainer = Trainer(config, dataset, mesh=parallel.make_mesh(1))
        state, it = trainer.init_state(), trainer.train_iterator()
        for _ in range(3):
            state, metrics = trainer.train_step(
                state, parallel.to_global_batch(next(it), trainer.mesh)
            )
        assert np.isfinite(float(metrics["loss"])), trunk


@pytest.mark.slow
def test_cold_variant_reports_new_users_topic(tmp_path):
    """``:cold``: the model reads the click history, and results.json holds every task's
    test metrics on new and on seen users (the topic of a new user is the real question).
    configs/social.py:cold differs only in its data (its split is tested in test_data)."""
    scenario = "news"
    social = configlib.load_config_file("configs/social.py:cold")
    assert "history_topic" in social.input_features and social.data.cold_user_fraction > 0
    config = configlib.load_config_file(f"configs/{scenario}.py:cold")
    smoke = configlib.load_config_file(f"configs/{scenario}.py:smoke")
    with config.unlocked():
        for key in ("num_users", "num_items", "num_impressions"):
            config.data[key] = smoke.data[key]
        config.model.update(embed_dim=8, trunk_hidden=(16,), tower_hidden=(8,))
        config.train.update(num_steps=20, eval_every=20, checkpoint_every=20, batch_size=256)
        config.ranking.enabled = False
    assert "history_topic" in config.input_features
    results = train_and_evaluate(config, str(tmp_path))
    subsets = results["test_subsets"]
    assert set(subsets) == {"cold_users", "warm_users"}
    assert (
        subsets["cold_users"]["examples"] + subsets["warm_users"]["examples"]
        == (results["dataset_sizes"]["test"])
    )
    assert 0.0 <= subsets["cold_users"]["topic"]["accuracy"] <= 1.0
