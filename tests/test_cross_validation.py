"""k-fold cross-validation: folds partition the train split, test is untouched, and the
script aggregates every fold's validation metrics."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from mtl_jax import configlib
from mtl_jax.data import load_dataset
from mtl_jax.data.schema import cross_validation_fold
from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_folds_partition_the_train_split():
    config = tiny_config()
    dataset = load_dataset(config.data, config.seed)
    # Tag every train row by position, to follow it through the folds.
    tagged = dataset.train.take(np.arange(len(dataset.train)))
    tagged.features["row"] = np.arange(len(dataset.train))
    dataset = type(dataset)(**{**dataset.__dict__, "train": tagged})
    held = []
    for fold in range(3):
        f = cross_validation_fold(dataset, 3, fold, seed=0)
        assert set(f.train.features["row"]).isdisjoint(f.validation.features["row"])
        assert len(f.train) + len(f.validation) == len(dataset.train)
        assert f.test is dataset.test
        held.append(f.validation.features["row"])
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), np.arange(len(dataset.train)))
    with pytest.raises(ValueError, match="folds >= 2"):
        cross_validation_fold(dataset, 3, 3, seed=0)


def test_bad_cv_config_is_named():
    config = tiny_config()
    config.cv.folds, config.cv.fold = 1, 0
    with pytest.raises(configlib.ConfigError, match="cv: folds must be 0"):
        configlib.validate(config)


@pytest.mark.slow
def test_cross_validate_script_aggregates_validation_folds(tmp_path):
    spec = importlib.util.spec_from_file_location("cv", ROOT / "experiments" / "cross_validate.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    config = tiny_config(num_steps=10, eval_every=5, checkpoint_every=5)
    config.lock()
    summary = cv.run(config, 2, tmp_path)
    folds = [json.loads((tmp_path / f"fold_{i}" / "results.json").read_text()) for i in range(2)]
    auc = [f["validation"]["click"]["auc"] for f in folds]
    assert summary["validation"]["click"]["auc"]["folds"] == auc
    assert summary["validation"]["click"]["auc"]["mean"] == pytest.approx(np.mean(auc))
    assert summary["validation"]["click"]["auc"]["std"] == pytest.approx(np.std(auc, ddof=1))
    assert folds[0]["dataset_sizes"]["test"] == folds[1]["dataset_sizes"]["test"]
    assert folds[0]["dataset_sizes"]["validation"] + folds[0]["dataset_sizes"]["train"] == (
        folds[1]["dataset_sizes"]["validation"] + folds[1]["dataset_sizes"]["train"]
    )
    assert "mean +- std" in (tmp_path / "cv.md").read_text()
