"""Staged training: per-stage tasks, frozen groups and optimizers; resume lands in the
right stage."""

import chex
import jax
import ml_collections
import numpy as np
import pytest

from mtl_jax import checkpoint, configlib, stages
from mtl_jax.data import load_dataset
from mtl_jax.train import Trainer, train_and_evaluate
from tests.helpers import tiny_config


def _staged_config():
    config = tiny_config(num_steps=20, eval_every=5, checkpoint_every=5, patience=100)
    config.checkpoint.max_to_keep = 10  # the test reads the checkpoint at the boundary
    with config.unlocked():
        config.stages = ml_collections.ConfigDict()
        config.stages.s1_pretrain = dict(steps=10, tasks=(), frozen=(), shared_lr_scale=1.0)
        config.stages.s2_finetune = dict(
            steps=10, tasks=("click",), frozen=("embeddings", "trunk"), shared_lr_scale=1.0
        )
    return config


def test_plan_and_stage_lookup():
    plan = stages.plan(_staged_config())
    assert [(s.name, s.start, s.end) for s in plan] == [
        ("s1_pretrain", 0, 10),
        ("s2_finetune", 10, 20),
    ]
    assert plan[0].tasks == ("click", "purchase", "rating", "category")
    assert plan[1].tasks == ("click",) and plan[1].frozen == {"embeddings", "trunk"}
    assert [stages.index_at(plan, s) for s in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, 1]
    assert len(stages.plan(tiny_config())) == 1  # no stages: one of everything


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.stages.s2_finetune.update(steps=5), "add up to 15 but train.num_steps is 20"),
        (lambda c: c.stages.s2_finetune.update(frozen=("towers",)), r"unknown groups \['towers'\]"),
        (lambda c: c.stages.s2_finetune.update(tasks=("clicks",)), r"\['clicks'\] are not tasks"),
    ],
)
def test_stage_config_errors(change, message):
    config = _staged_config()
    change(config)
    with pytest.raises(configlib.ConfigError, match=message):
        configlib.validate(config)


@pytest.mark.slow
def test_frozen_groups_do_not_move_and_resume_lands_in_the_stage(tmp_path):
    config = _staged_config()
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    # Stop inside the second stage, then resume: the same end as the straight run.
    assert train_and_evaluate(config, str(tmp_path / "split"), max_steps_this_run=15) is None
    resumed = train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed["test"] == straight["test"]

    dataset = load_dataset(config.data, config.seed)

    def params_at(workdir, step):
        ckpt = checkpoint.Checkpointer(workdir)
        trainer = Trainer(config, dataset, stage=stages.index_at(stages.plan(config), step))
        try:
            state = ckpt.restore_state(step, trainer.abstract_state)
            assert ckpt.restore_meta(step)["stage"] == trainer.stage.name
        finally:
            ckpt.close()
        return jax.device_get(state.params)

    boundary, end = params_at(tmp_path / "straight", 10), params_at(tmp_path / "straight", 20)
    chex.assert_trees_all_equal(
        params_at(tmp_path / "split", 20), end
    )  # resumed mid-stage, same parameters
    moved = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b)))
    assert moved(boundary["embedding"], end["embedding"]) == 0  # frozen in stage 2
    assert moved(boundary["trunk"], end["trunk"]) == 0
    assert moved(boundary["towers_purchase"], end["towers_purchase"]) == 0  # not a stage-2 task
    assert moved(boundary["towers_click"], end["towers_click"]) > 0
    init = jax.device_get(Trainer(config, dataset).init_state().params)
    assert moved(init["trunk"], boundary["trunk"]) > 0  # stage 1 trained the trunk
