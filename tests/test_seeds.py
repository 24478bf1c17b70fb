"""Seeds in parallel: one vmapped step for S seeds ends where S separate runs end."""

import json

import jax
import numpy as np
import pytest

from mtl_jax.checkpoint import Checkpointer
from mtl_jax.configlib import ConfigError
from mtl_jax.data import load_dataset
from mtl_jax.data.pipeline import train_iterator
from mtl_jax.seeds import check_parallel_seeds, seed_config, train_seeds
from mtl_jax.train import Trainer, train_and_evaluate
from tests.helpers import tiny_config

SEEDS = (3, 7)


def test_stacked_iterator_yields_each_seeds_own_batches():
    config = tiny_config()
    split = load_dataset(config.data, 0).train
    kwargs = dict(batch_size=32, num_steps=6)
    stacked = list(train_iterator(split, seed=list(SEEDS), **kwargs))
    for i, seed in enumerate(SEEDS):
        for step, own in enumerate(train_iterator(split, seed=seed, **kwargs)):
            mine = jax.tree.map(lambda x, i=i: x[i], stacked[step])
            jax.tree.map(np.testing.assert_array_equal, mine, own)
    first = stacked[0]["features"]["user_id"]
    assert not np.array_equal(first[0], first[1])  # the seeds' orders differ


@pytest.mark.slow
def test_vmapped_seeds_equal_separate_runs_across_a_resume(tmp_path):
    """PCGrad (per-task gradients, a random projection order in the combiner state) and
    dropout: everything a seed owns must follow its own key. The vmapped run is cut after
    10 steps and resumed from its stacked checkpoint."""
    config = tiny_config(num_steps=20, eval_every=10, checkpoint_every=10, patience=100)
    config.data_seed = 0
    config.balancing.method = "pcgrad"
    config.model.dropout = 0.1

    assert train_seeds(config, SEEDS, tmp_path / "vmap", max_steps_this_run=10) is None
    together = train_seeds(config, SEEDS, tmp_path / "vmap")
    # The second seed alone (the first's keys could pass for everyone's): one run is enough.
    i, seed = 1, SEEDS[1]
    alone = train_and_evaluate(seed_config(config, seed), str(tmp_path / f"alone_{seed}"))
    assert together[i]["best_step"] == alone["best_step"]
    assert together[i]["steps_trained"] == alone["steps_trained"] == 20
    for task, metrics in alone["test"].items():
        for name, value in metrics.items():
            assert together[i]["test"][task][name] == pytest.approx(value, rel=1e-5), (task, name)
    abstract = Trainer(seed_config(config, seed), load_dataset(config.data, 0)).abstract_state
    best = [
        Checkpointer(tmp_path / d).restore_best(abstract.params)
        for d in (f"vmap/seed_{seed}", f"alone_{seed}")
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), *best)
    for seed in SEEDS:
        saved = json.loads((tmp_path / f"vmap/seed_{seed}/config.json").read_text())
        assert saved["seed"] == seed
        train_logs = [
            json.loads(line)
            for line in (tmp_path / f"vmap/seed_{seed}/metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in train_logs if r["split"] == "validation"] == [10, 20]
    assert together[0]["test"] != together[1]["test"]  # the seeds really differ
    assert together[0]["parallel_seeds"] == 2
    # Finished: a rerun re-reports without training.
    assert train_seeds(config, SEEDS, tmp_path / "vmap") == together


def test_refuses_what_cannot_share_a_step():
    config = tiny_config()
    with pytest.raises(ConfigError, match="data_seed"):  # the simulator draws from the seed
        check_parallel_seeds(config, SEEDS)
    config.data_seed = 0
    check_parallel_seeds(config, SEEDS)
    with pytest.raises(ConfigError, match="distinct"):
        check_parallel_seeds(config, (1, 1))
    config.distill.teacher_workdir = "/somewhere"
    with pytest.raises(ConfigError, match="distillation"):
        check_parallel_seeds(config, SEEDS)


@pytest.mark.slow
def test_vmapped_seeds_with_sampled_negatives_equal_separate_runs(tmp_path):
    """The implicit task's negatives follow each seed's own draws in the stacked pipeline,
    and every seed is scored on the same evaluation negatives (MovieLens sample, offline)."""
    import pathlib

    from configs import movielens as movielens_config

    config = movielens_config.get_config("smoke")
    config.data.data_dir = str(pathlib.Path(__file__).parent / "data" / "ml-100k-sample")
    config.train.update(num_steps=8, eval_every=4, checkpoint_every=4, batch_size=64)
    config.ranking.enabled = False
    together = train_seeds(config, SEEDS, tmp_path / "vmap")
    # The second seed alone (the first's draws could pass for everyone's): one run is enough.
    seed = SEEDS[1]
    alone = train_and_evaluate(seed_config(config, seed), str(tmp_path / f"alone_{seed}"))
    for task in ("rated", "rating"):
        for name, value in alone["test"][task].items():
            assert together[1]["test"][task][name] == pytest.approx(value, rel=1e-4), (task, name)
    assert together[0]["test"]["rated"] != together[1]["test"]["rated"]
