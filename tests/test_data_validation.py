"""Every built dataset is checked before training: a corrupted column is named with its
split, column and rows (tests/test_movielens.py checks the parser's file-and-line errors)."""

import dataclasses

import numpy as np
import pytest

from configs import mmoe_synthetic
from mtl_jax.data import load_dataset
from mtl_jax.data.movielens import DataFormatError
from mtl_jax.data.validation import validate_dataset
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def dataset():
    config = tiny_config()
    return load_dataset(config.data, config.seed)


def _corrupt(dataset, split, group, column, row, value):
    old = getattr(dataset, split)
    columns = {k: np.array(v) for k, v in getattr(old, group).items()}
    columns[column] = columns[column].astype(np.result_type(columns[column], type(value)))
    columns[column][row] = value
    return dataclasses.replace(dataset, **{split: dataclasses.replace(old, **{group: columns})})


def test_the_simulated_dataset_is_valid(dataset):
    validate_dataset(dataset)


@pytest.mark.parametrize(
    "split, group, column, row, value, expected",
    [
        ("train", "features", "item_id", 7, -1, r"train split, column 'item_id': 1 bad values "
         r"\(row 7: -1\); ids must lie in \[0, 80\)"),
        ("test", "features", "user_id", 3, 120, r"test split, column 'user_id'.*row 3: 120.*"
         r"the largest valid id of 'user_id' is 119"),
        ("validation", "labels", "rating", 0, np.nan, r"column 'rating'.*labels must be finite"),
        ("train", "labels", "click", 5, 2.0, r"column 'click'.*a binary label is 0 or 1"),
        ("train", "labels", "category", 1, 99, r"column 'category'.*class ids 0\.\.19"),
        ("train", "labels", "category", 2, 1.5, r"column 'category'.*class ids"),
        ("test", "masks", "purchase", 4, 2.0, r"column 'mask of purchase'.*masks must be 0 or 1"),
    ],
)  # fmt: skip
def test_a_corrupted_column_is_named(dataset, split, group, column, row, value, expected):
    bad = _corrupt(dataset, split, group, column, row, value)
    if group == "labels":  # the row must be labelled for its label to matter
        bad = _corrupt(bad, split, "masks", column, row, 1.0)
    with pytest.raises(DataFormatError, match=expected):
        validate_dataset(bad)


def test_a_bad_label_under_a_zero_mask_is_ignored(dataset):
    bad = _corrupt(dataset, "train", "labels", "rating", 0, np.nan)
    bad = _corrupt(bad, "train", "masks", "rating", 0, 0.0)
    validate_dataset(bad)


def test_an_empty_split_and_a_non_finite_dense_feature_are_named(dataset):
    empty = dataclasses.replace(dataset, validation=dataset.validation.take(np.arange(0)))
    with pytest.raises(DataFormatError, match="the validation split is empty"):
        validate_dataset(empty)
    config = mmoe_synthetic.get_config("smoke")
    dense = load_dataset(config.data, 0)
    validate_dataset(dense)
    name = dense.features[0].name
    with pytest.raises(DataFormatError, match=rf"column '{name}'.*dense features must be finite"):
        validate_dataset(_corrupt(dense, "train", "features", name, 3, np.inf))
