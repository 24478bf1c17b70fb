"""Checks every built dataset before training: ids in range, labels finite and within their
task's range, masks of 0 and 1, splits that hold examples.

Parsers check their files as they read them (naming file, line and column, e.g.
``movielens.load``); this is the second line that every dataset passes through, simulators
and future file datasets alike, so an out-of-range id never becomes a silent wrong
embedding row (JAX clamps out-of-range gathers) and a NaN label never reaches the loss.
"""

from __future__ import annotations

import numpy as np

from mtl_jax.data.movielens import DataFormatError
from mtl_jax.data.schema import MultiTaskDataset, Split
from mtl_jax.tasks import TaskSpec


def _show(value: np.ndarray) -> str:
    items = np.asarray(value).tolist()
    if isinstance(items, list) and len(items) > 4:
        return f"[{', '.join(map(repr, items[:4]))}, ...]"
    return repr(items)


def _where(split: str, column: str, bad: np.ndarray, values: np.ndarray) -> str:
    rows = np.flatnonzero(bad)
    shown = ", ".join(f"row {r}: {_show(values[r])}" for r in rows[:3])
    return f"{split} split, column {column!r}: {len(rows)} bad values ({shown})"


def _check_labels(split_name: str, split: Split, task: TaskSpec) -> None:
    mask = np.asarray(split.masks[task.name])
    labels = np.asarray(split.labels[task.name])
    bad_mask = ~np.isin(mask, (0, 1))
    if bad_mask.any():
        where = _where(split_name, f"mask of {task.name}", bad_mask, mask)
        raise DataFormatError(f"{where}; masks must be 0 or 1")
    on = mask > 0
    if labels.ndim == 2:  # multilabel: a row is bad when any of its labels is
        finite_row = np.isfinite(labels).all(axis=1)
        in_range_row = np.isin(labels, (0, 1)).all(axis=1)
    else:
        finite_row = np.isfinite(labels)
        in_range_row = finite_row.copy()
        if task.kind == "binary":
            in_range_row = np.isin(labels, (0, 1))
        elif task.kind == "multiclass":
            in_range_row = finite_row & (labels >= 0) & (labels < task.num_classes)
            in_range_row &= labels == np.round(labels)
    bad = on & ~finite_row
    if bad.any():
        raise DataFormatError(
            f"{_where(split_name, task.name, bad, labels)}; labels must be finite"
        )
    bad = on & ~in_range_row
    if bad.any():
        allowed = {
            "binary": "0 or 1",
            "multilabel": "0 or 1",
            "multiclass": f"class ids 0..{task.num_classes - 1}",
        }[task.kind]
        raise DataFormatError(
            f"{_where(split_name, task.name, bad, labels)}; a {task.kind} label is {allowed}"
        )


def validate_dataset(dataset: MultiTaskDataset) -> None:
    """``DataFormatError`` naming the split, column and rows of the first problem found."""
    for split_name in ("train", "validation", "test"):
        split = dataset.split(split_name)
        if not isinstance(split, Split):  # streamed from shards: checked when prepared
            continue
        if len(split) == 0:
            raise DataFormatError(f"dataset {dataset.name!r}: the {split_name} split is empty")
        for spec in dataset.features:
            column = np.asarray(split.features[spec.name])
            if spec.is_dense:
                bad = ~np.isfinite(column).reshape(len(column), -1).all(axis=1)
                if bad.any():
                    where = _where(split_name, spec.name, bad, column)
                    raise DataFormatError(f"{where}; dense features must be finite")
                continue
            bad = ((column < 0) | (column >= spec.vocab_size)).reshape(len(column), -1).any(1)
            if bad.any():
                where = _where(split_name, spec.name, bad, column)
                raise DataFormatError(
                    f"{where}; ids must lie in [0, {spec.vocab_size}): the largest valid id of "
                    f"{spec.name!r} is {spec.vocab_size - 1}"
                )
        for task in dataset.tasks:
            _check_labels(split_name, split, task)
