"""Locked configs: typos and bad values fail early with messages naming the valid choices."""

import pytest

from configs import ecommerce
from mtl_jax import configlib
from mtl_jax.data import load_dataset
from tests.helpers import tiny_config


def test_configs_validate():
    """Every config file in configs/, with each variant it declares, passes validation."""
    import importlib
    import pathlib

    paths = sorted(p for p in pathlib.Path("configs").glob("*.py") if p.stem != "__init__")
    assert {p.stem for p in paths} >= {"ecommerce", "movielens", "news", "social"}
    for path in paths:
        module = importlib.import_module(f"configs.{path.stem}")
        for variant in getattr(module, "VARIANTS", ("", "smoke")):
            spec = f"{path}:{variant}" if variant else str(path)
            configlib.validate(configlib.load_config_file(spec))


def test_unknown_key_names_the_valid_keys():
    config = ecommerce.get_config()
    with pytest.raises(AttributeError, match=r"num_expert.*num_experts"):
        config.model.num_expert = 8


def test_unknown_variant():
    with pytest.raises(ValueError, match="smoke"):
        ecommerce.get_config("tiny")


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("model.trunk", "transformer", r"model.trunk.*valid: \('shared_bottom', 'single_task'"),
        ("model.num_experts", 0, r"model.num_experts: must be >= 1"),
        ("optim.learning_rate", -1e-3, r"optim.learning_rate: must lie in \(0, inf\)"),
        ("balancing.method", "magic", r"balancing.method.*valid: \(.ew., .static., .uw."),
        ("train.checkpoint_every", 15, r"multiple of train.eval_every=10"),
        ("optim.embedding_optimizer", "lamb", r"valid: \('adagrad', 'rowwise_adagrad', 'sgd'"),
    ],
)
def test_bad_values_fail_with_choices(key, value, match):
    config = tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(configlib.ConfigError, match=match):
        configlib.validate(config)


def test_dataset_names_checked():
    config = tiny_config()
    dataset = load_dataset(config.data, config.seed)
    configlib.validate_against_dataset(config, dataset)
    config.tasks = ("click", "dwell")
    with pytest.raises(configlib.ConfigError, match=r"unknown task 'dwell'; valid: \['click'"):
        configlib.validate_against_dataset(config, dataset)
    config = tiny_config()
    config.input_features = ("user_id", "category")
    with pytest.raises(configlib.ConfigError, match="'category' is also a prediction target"):
        configlib.validate_against_dataset(config, dataset)
    config = tiny_config()
    config.train.early_stopping_metric = "click/rmse"
    with pytest.raises(configlib.ConfigError, match="click/auc"):
        configlib.validate_against_dataset(config, dataset)
