"""Column-oriented datasets: every feature, label and mask is one numpy array per split.

Columns (not per-example records) let the input pipeline gather a whole batch with one
numpy fancy-indexing call per column, which is what keeps a small model fed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mtl_jax.tasks import TaskSpec, label_prior


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """An input feature: categorical with ids in ``[0, vocab_size)``; with ``dense_dim > 0``
    a float vector of that size fed to the trunk as it is; with ``bag_size > 0`` a bag of
    up to that many ids per example (a multi-hot/list column, e.g. tags), whose embeddings
    are averaged over the entries its mask column (``bag_mask_name``) marks valid."""

    name: str
    vocab_size: int
    dense_dim: int = 0
    bag_size: int = 0

    @property
    def is_dense(self) -> bool:
        return self.dense_dim > 0

    @property
    def is_bag(self) -> bool:
        return self.bag_size > 0

    def placeholder(self) -> dict[str, np.ndarray]:
        """One example's worth of zeros for every column this feature reads (for init)."""
        if self.is_dense:
            return {self.name: np.zeros((1, self.dense_dim), np.float32)}
        if self.is_bag:
            return {
                self.name: np.zeros((1, self.bag_size), np.int32),
                bag_mask_name(self.name): np.zeros((1, self.bag_size), np.float32),
            }
        return {self.name: np.zeros((1,), np.int32)}


def bag_mask_name(feature: str) -> str:
    """The column holding a bag feature's (B, bag_size) validity mask: 1 for an entry, 0 for
    padding. A column of its own (not "id 0 means padding") because the sparse-row train
    step renumbers ids (mtl_jax/sparse_rows.py), so no id value can mean padding there."""
    return f"{feature}/mask"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's columns. ``oracle`` holds ground-truth expectations where a simulator knows
    them (the probability of a click, the expected rating), for the report's oracle metrics."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lengths = {
            f"{group}/{name}": len(col)
            for group in ("features", "labels", "masks", "oracle")
            for name, col in getattr(self, group).items()
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of one split differ in length: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def columns(self) -> dict[str, dict[str, np.ndarray]]:
        """The arrays a model batch is gathered from (no oracle: the model never sees it)."""
        return {"features": self.features, "labels": self.labels, "masks": self.masks}

    def prior(self, task: TaskSpec) -> np.ndarray:
        """The task's label prior over this split's labelled rows (``tasks.label_prior``)."""
        mask = self.masks[task.name] > 0
        return label_prior(task, self.labels[task.name][mask])

    def joined(self, other: Split) -> Split:
        """This split's rows followed by ``other``'s (the same columns)."""
        cat = lambda a, b: {k: np.concatenate([a[k], b[k]]) for k in a}  # noqa: E731
        return Split(
            cat(self.features, other.features),
            cat(self.labels, other.labels),
            cat(self.masks, other.masks),
            cat(self.oracle, other.oracle),
        )

    def take(self, index: np.ndarray) -> Split:
        pick = lambda d: {k: v[index] for k, v in d.items()}
        return Split(pick(self.features), pick(self.labels), pick(self.masks), pick(self.oracle))


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Per-user and per-item feature tables, so that any (user, item) pair can be scored:
    what top-k ranking over the whole catalogue needs (the splits hold only observed pairs).

    ``user_features`` / ``item_features`` map feature names to arrays indexed by user / item
    id; ``items`` lists the ids that exist; ``item_attributes`` (num item ids, G) multi-hot
    (e.g. genres) measures list diversity.
    """

    user_features: dict[str, np.ndarray]
    item_features: dict[str, np.ndarray]
    items: np.ndarray
    item_attributes: np.ndarray
    user_key: str = "user_id"
    item_key: str = "item_id"

    def pair_features(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Feature columns for the pairs ``(users[n], items[n])``."""
        return {
            **{k: v[users] for k, v in self.user_features.items()},
            **{k: v[items] for k, v in self.item_features.items()},
        }


TEXT_FEATURES = ("item_id", "user_id")  # the id features a dataset can describe in words


@dataclasses.dataclass(frozen=True)
class MultiTaskDataset:
    """Feature and task schema plus the train / validation / test splits."""

    name: str
    features: tuple[FeatureSpec, ...]
    tasks: tuple[TaskSpec, ...]
    train: Split
    validation: Split
    test: Split
    item_text: tuple[str, ...] = ()
    catalogue: Catalogue | None = None  # for top-k ranking evaluation, where available
    user_text: tuple[str, ...] = ()
    # Named subsets of the test split (row indices), reported beside the whole split,
    # e.g. ``cold_items`` / ``warm_items`` in the cold-start protocol.
    test_subsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    validation_subsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # File datasets: the encoders fitted on the train split (mtl_jax.data.files.FileEncoding),
    # saved with the run so that raw rows can be encoded later as in training.
    encoding: Any = None
    # Text of other id features (file datasets' ``text`` columns): feature -> one text per id.
    texts: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Per split name, each row's event time (where the data has one): the order of a user's
    # history in an LM trunk's prompts (mtl_jax/text/prompts.py).
    times: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def text_for(self, feature: str) -> tuple[str, ...]:
        """One text per id of ``feature`` (``item_id``, ``user_id`` or a ``texts`` entry),
        indexed by id."""
        by_feature = dict(zip(TEXT_FEATURES, (self.item_text, self.user_text), strict=True))
        by_feature.update(self.texts)
        texts = by_feature.get(feature, ())
        if not texts:
            have = [f for f, t in by_feature.items() if t]
            raise ValueError(
                f"dataset {self.name!r} has no text for feature {feature!r}; it has text for {have}"
            )
        return texts

    def split(self, name: str) -> Split:
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; valid: train, validation, test")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in ("train", "validation", "test")}


def cold_items(
    items: np.ndarray, fraction: float, seed: int, kind: str = "items"
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded draws of ``fraction`` of the ids in ``items`` (sorted): the ids
    held out for test, and as many held out for validation, so that cold-start choices can
    be made on validation cold ids without looking at test. ``kind`` names the ids in
    errors (the config key is ``cold_<singular kind>_fraction``)."""
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"cold_{kind[:-1]}_fraction must lie in [0, 0.5), got {fraction}")
    unique = np.unique(items)
    count = int(round(fraction * len(unique)))
    drawn = np.random.default_rng(seed).choice(unique, size=2 * count, replace=False)
    return np.sort(drawn[:count]), np.sort(drawn[count:])


def hold_out_items(
    item_column: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    fraction: float,
    seed: int,
    kind: str = "items",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict]:
    """The cold-start protocol on row indices: ``cold_items`` draws the test and validation
    cold ids of ``item_column`` (items, or readers with ``kind="users"``); every row of a
    test-cold id, from any split, goes to test only, every row of a validation-cold id to
    validation only, so training never sees them. Returns the new (sorted) train,
    validation and test rows and the ``cold_<kind>`` / ``warm_<kind>`` row subsets of test
    and of validation."""
    test_items, val_items = cold_items(item_column, fraction, seed, kind)
    cold, val_cold = np.isin(item_column, test_items), np.isin(item_column, val_items)
    rows = np.arange(len(item_column))
    train = train[~cold[train] & ~val_cold[train]]
    val = np.sort(np.concatenate([val[~cold[val]], rows[val_cold & ~np.isin(rows, val)]]))
    test = test[~val_cold[test]]
    test = np.sort(np.concatenate([test, rows[cold & ~np.isin(rows, test)]]))
    subsets = {
        f"cold_{kind}": np.flatnonzero(cold[test]),
        f"warm_{kind}": np.flatnonzero(~cold[test]),
    }
    val_subsets = {
        f"cold_{kind}": np.flatnonzero(val_cold[val]),
        f"warm_{kind}": np.flatnonzero(~val_cold[val]),
    }
    return train, val, test, subsets, val_subsets


def random_split(
    n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted index arrays for train, validation and test."""
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return np.sort(train), np.sort(val), np.sort(test)


def cross_validation_fold(
    dataset: MultiTaskDataset, folds: int, fold: int, seed: int
) -> MultiTaskDataset:
    """Fold ``fold`` of a seeded ``folds``-way split of the train split: that fold becomes
    the validation split, the other folds the train split; the test split is untouched (and
    the original validation split unused), so model selection never sees test data."""
    if not isinstance(dataset.train, Split):
        raise ValueError("cross-validation folds need the train split in memory, not streamed")
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds; got folds={folds}, fold={fold}")
    order = np.random.default_rng(seed).permutation(len(dataset.train))
    parts = np.array_split(order, folds)
    held = np.sort(parts[fold])
    kept = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != fold]))
    times = dataset.times
    if "train" in times:
        times = {"train": times["train"][kept], "validation": times["train"][held]}
        times.update({"test": dataset.times["test"]} if "test" in dataset.times else {})
    return dataclasses.replace(
        dataset,
        train=dataset.train.take(kept),
        validation=dataset.train.take(held),
        validation_subsets={},
        times=times,
    )
