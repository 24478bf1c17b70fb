"""Sampled negatives for an implicit-feedback task: "will this user interact with this item".

A log holds only what users did, so such a task's labels are all positive. Each observed
interaction of the configured task is a positive; every training batch gets ``per_positive``
negatives per positive, drawn afresh each step from a distribution Q over the catalogue's
items (uniform, or popularity ``count ** popularity_power``), paired with the positive's user
(the catalogue's user and item feature tables give the negative row's features), labelled 0
for the task and unlabelled for every other task. Draws are seeded by (seed, step), so a
resumed run sees the negatives it would have seen.

With K negatives per positive drawn from Q, the logit that minimises the binary
cross-entropy is ``log p(item | user) - log(K Q(item))``: popularity sampling would teach the
model to demote popular items by exactly ``log Q``. The logQ correction (Yi et al. 2019, for
sampled softmax; the same algebra holds for the binary loss) adds ``-log(K Q(item))`` to the
logit in training only, so the model's own logit estimates ``log p(item | user)`` (up to a
constant) and ranks by it. With uniform sampling the offset is one constant for all items.

Evaluation: a split's positives get the same number of negatives, drawn once from a seed, so
the task's AUC and log loss are defined (sampled metrics: what they rank is positives against
Q's items, not against everything the user did not do; the catalogue ranking measures that).
Negatives may collide with items the user did interact with (rare in a large catalogue);
they are not filtered.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np

from mtl_jax.data.schema import Catalogue, MultiTaskDataset, Split

SAMPLINGS = ("uniform", "popularity")
OFFSETS = "logit_offsets"  # the batch entry {task: (B,) offsets} the train step adds to logits
_EVAL_STREAM = 0xE7A1  # separates evaluation draws from any step's training draws

Batch = dict[str, dict[str, np.ndarray]]


def default_config() -> ml_collections.ConfigDict:
    """Off (task '') by default; see the module docstring for each knob."""
    return ml_collections.ConfigDict(
        dict(
            task="",
            per_positive=4,
            sampling="uniform",
            popularity_power=0.75,
            logq_correction=True,
            validation_positives=False,
        )
    )


def check_config(c: ml_collections.ConfigDict, dataset: MultiTaskDataset, tasks) -> list[str]:
    """Problems with a ``negatives`` section for this dataset and run's tasks (empty: fine)."""
    if not c.task:
        return []
    kinds = {t.name: t.kind for t in dataset.tasks}
    problems = []
    if c.task not in tasks or kinds.get(c.task) != "binary":
        binary = [t for t in tasks if kinds.get(t) == "binary"]
        problems.append(f"task {c.task!r} must be a binary task of this run: {binary}")
    if dataset.catalogue is None:
        problems.append(
            f"dataset {dataset.name!r} has no catalogue of user and item features to draw "
            "negative items from"
        )
    if not isinstance(c.per_positive, int) or c.per_positive < 1:
        problems.append(f"per_positive must be an int >= 1, got {c.per_positive!r}")
    if c.sampling not in SAMPLINGS:
        problems.append(f"sampling {c.sampling!r}; valid: {SAMPLINGS}")
    if not 0.0 <= c.popularity_power <= 1.0:
        problems.append(f"popularity_power must lie in [0, 1], got {c.popularity_power}")
    return problems


@dataclasses.dataclass(frozen=True)
class NegativeSampler:
    """Draws negative items for ``task`` and builds their rows (see the module docstring).

    ``items``: the catalogue's item ids; ``probabilities``: Q over them (sums to 1)."""

    task: str
    catalogue: Catalogue
    items: np.ndarray
    probabilities: np.ndarray
    per_positive: int
    logq_correction: bool

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict, dataset: MultiTaskDataset):
        """The sampler of a ``negatives`` section, or None when it is off."""
        if not c.task:
            return None
        cat = dataset.catalogue
        items = np.asarray(cat.items, np.int64)
        if c.sampling == "uniform":
            q = np.ones(len(items))
        else:
            train = dataset.train
            observed = train.masks[c.task] > 0
            ids = np.asarray(train.features[cat.item_key])[observed].astype(np.int64)
            counts = np.bincount(ids, minlength=int(items.max()) + 1)[items]
            # Every catalogue item stays drawable (an item unseen in train counts as one).
            q = np.maximum(counts, 1).astype(np.float64) ** float(c.popularity_power)
        return cls(c.task, cat, items, q / q.sum(), int(c.per_positive), bool(c.logq_correction))

    @functools.cached_property
    def _q_by_id(self) -> np.ndarray:
        lookup = np.zeros(int(self.items.max()) + 1)
        lookup[self.items] = self.probabilities
        return lookup

    def offsets(self, item_ids: np.ndarray) -> np.ndarray:
        """``-log(K Q(item))`` per row: what the train step adds to the task's logits."""
        q = np.maximum(self._q_by_id[np.asarray(item_ids, np.int64)], 1e-30)
        return (-np.log(self.per_positive * q)).astype(np.float32)

    def _negative_rows(self, split: Split, rng: np.random.Generator, q: np.ndarray) -> Split:
        """``per_positive`` negative rows, items drawn from ``q``, for each positive row of
        the task in ``split`` (the simulator's oracle is unknown for a drawn pair: NaN)."""
        positive = (split.masks[self.task] > 0) & (split.labels[self.task] > 0.5)
        users = np.asarray(split.features[self.catalogue.user_key])[positive]
        users = np.repeat(users, self.per_positive)
        drawn = self.items[rng.choice(len(self.items), size=len(users), p=q)]
        pair = self.catalogue.pair_features(users.astype(np.int64), drawn)
        missing = sorted(set(split.features) - set(pair))
        if missing:
            raise ValueError(
                f"negatives: the catalogue has no feature table for {missing}, so negative "
                f"rows cannot be built; it has {sorted(pair)}"
            )
        n = len(users)
        zeros = lambda col: np.zeros((n, *col.shape[1:]), col.dtype)  # noqa: E731
        masks = {k: zeros(col) for k, col in split.masks.items()}
        masks[self.task][:] = 1
        return Split(
            {k: pair[k].astype(col.dtype) for k, col in split.features.items()},
            {k: zeros(col) for k, col in split.labels.items()},
            masks,
            {k: np.full((n, *v.shape[1:]), np.nan, v.dtype) for k, v in split.oracle.items()},
        )

    def train_batch(self, batch: Batch, step: int, seed: int) -> Batch:
        """The batch with its negatives appended (and the task's logit offsets under the
        logQ correction); drawn from (seed, step, the JAX process)."""
        import jax  # noqa: PLC0415 - only the train pipeline needs the process index

        rng = np.random.default_rng([seed, int(step), jax.process_index()])
        positives = Split(batch["features"], batch["labels"], batch["masks"])
        out = positives.joined(self._negative_rows(positives, rng, self.probabilities)).columns()
        if self.logq_correction:
            out[OFFSETS] = {self.task: self.offsets(out["features"][self.catalogue.item_key])}
        return out

    def evaluation_split(self, split: Split, seed: int) -> Split:
        """``split`` with negatives for its positives, the same for the same split and seed.
        They are drawn uniformly whatever the training distribution, so the task's AUC is
        the usual sampled one (positives against random catalogue items) and compares runs
        trained with different samplers."""
        rng = np.random.default_rng([seed, len(split), _EVAL_STREAM])
        uniform = np.full(len(self.items), 1 / len(self.items))
        return split.joined(self._negative_rows(split, rng, uniform))

    @property
    def positive_rate(self) -> float:
        """The task's positive share of training batches and evaluation splits: 1 / (1 + K)."""
        return 1.0 / (1 + self.per_positive)

    def initial_logit(self) -> float:
        """The head's starting logit: the positive rate of training batches, 1 / (1 + K),
        less the mean offset over Q's draws (so that logit + offset starts there)."""
        rate = self.positive_rate
        logit = float(np.log(rate / (1 - rate)))
        if not self.logq_correction:
            return logit
        q = self.probabilities
        mean_offset = float(-(q * np.log(self.per_positive * q)).sum())
        return logit - mean_offset


def sampler(config: ml_collections.ConfigDict, dataset: MultiTaskDataset) -> Any:
    """The run's ``NegativeSampler``, or None without ``negatives.task``."""
    section = config.get("negatives")
    return None if section is None else NegativeSampler.from_config(section, dataset)


def with_validation_positives(dataset: MultiTaskDataset, task: str) -> MultiTaskDataset:
    """The dataset whose train split also holds the validation rows as positives of the
    implicit ``task`` alone (every other task's mask 0: their labels stay unseen), so the
    implicit task learns from every interaction before test, as matrix-factorisation
    baselines fitted on train + validation do."""
    val = dataset.validation
    masks = {k: np.zeros_like(m) if k != task else m for k, m in val.masks.items()}
    train = dataset.train.joined(Split(val.features, val.labels, masks, val.oracle))
    times = dict(dataset.times)
    if "train" in times and "validation" in times:
        times["train"] = np.concatenate([times["train"], times["validation"]])
    return dataclasses.replace(dataset, train=train, times=times)
