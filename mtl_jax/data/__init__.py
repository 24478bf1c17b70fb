"""Datasets by name, built from a config's ``data`` section."""

from __future__ import annotations

from typing import Any

from mtl_jax.data.adult import build_adult
from mtl_jax.data.ecommerce import simulate_ecommerce
from mtl_jax.data.files import build_file_dataset
from mtl_jax.data.mmoe_synthetic import simulate_mmoe_synthetic
from mtl_jax.data.movielens import build_dataset as movielens_dataset
from mtl_jax.data.news import simulate_news
from mtl_jax.data.schema import FeatureSpec, MultiTaskDataset, Split
from mtl_jax.data.social import simulate_social
from mtl_jax.data.streaming import load_prepared

_BUILDERS = {
    "adult": build_adult,
    "ecommerce": simulate_ecommerce,
    "files": build_file_dataset,
    "movielens": movielens_dataset,
    "mmoe_synthetic": simulate_mmoe_synthetic,
    "news": simulate_news,
    "social": simulate_social,
}

DATASETS = tuple(_BUILDERS)
FILE_DATASETS = ("files", "adult")  # their schema is the config's features section


def load_dataset(data_config: Any, seed: int, features: Any = None) -> MultiTaskDataset:
    """Builds the dataset named by ``data_config.name``; its other keys are the builder's
    kwargs. ``features`` (the config's ``features`` section) is the column schema of a file
    dataset (``FILE_DATASETS``, see mtl_jax/data/files.py); the others define their own."""
    kwargs = dict(data_config)
    name = kwargs.pop("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {DATASETS}")
    if name in FILE_DATASETS:
        kwargs["features"] = {k: dict(v) for k, v in dict(features or {}).items()}
    if name == "files" and kwargs.get("prepared"):
        return load_prepared(kwargs.pop("prepared"), seed, kwargs, kwargs.pop("features"))
    return _BUILDERS[name](seed=seed, **kwargs)


def drawn_from_seed(data_config: Any) -> bool:
    """Whether the dataset's examples or splits change with the seed it is built with: the
    simulators draw everything from it; MovieLens only its cold-start item draw."""
    if data_config.name == "movielens":
        return data_config.cold_item_fraction > 0
    return True


__all__ = [
    "DATASETS",
    "drawn_from_seed",
    "FeatureSpec",
    "MultiTaskDataset",
    "Split",
    "load_dataset",
]
