"""Your own data: CSV or Parquet files and a column schema (the template to copy).

The example reads tests/data/files_sample/ (a small synthetic click log; see
tests/data/make_files_sample.py): string user ids, large integer item ids, a category, a
price with gaps, an age, pipe-separated tags, a title; tasks click (binary), like (rating >
3, only where a rating exists), rating (1-5 regression) and actions (multilabel: cart,
share, save after a click). Replace the paths, features and labels with yours.

Run:
  python run.py --config=configs/files.py --workdir=runs/files
  python run.py --config=configs/files.py --workdir=runs/f --config.data.train='logs/day*.parquet'
  python run.py --config=configs/files.py --workdir=runs/ft --config.text.features='("title",)'

What to set (mtl_jax/data/files.py has the details):
- data.train / data.validation / data.test: a path, a glob or a comma-separated list of
  either per split (validation '' = 10% of train drawn with the seed); or data.file with
  data.split = random | time | user (data.split_column: the timestamp or user column).
- data.format (auto by suffix, csv, parquet), data.delimiter, data.header, data.columns
  (names when the CSV has no header), data.missing_values (tokens that mean "missing").
- features.<name>: kind categorical (a vocabulary from train with min_count, row 0 for
  values train never saw; or hash_buckets = N for ids without a vocabulary), dense
  (normalize none | standard | log1p, missing mean | zero | error), multi_hot (a list per
  row: Parquet lists or CSV cells split at separator; max_length, 0 = the longest in train;
  the model averages its elements' embeddings) or text (read by the pretrained text
  encoder when listed in text.features; no id embedding of its own); column defaults to
  the name. Every encoder is fitted on train only and saved in <workdir>/features/.
- data.labels.<task>: kind binary | regression | multiclass | multilabel, column, and a
  derivation (threshold, equals or value_map); multilabel reads a list of class names
  (classes) or ids (num_classes); a missing source value masks the task for that row.
"""

from __future__ import annotations

import pathlib

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data import files

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "files_sample"
TASKS = ("click", "like", "rating", "actions")


def features() -> dict:
    """The column schema of the input features (fresh ConfigDicts on every call)."""
    return {
        "user": files.feature_config(kind="categorical", min_count=1),
        "item": files.feature_config(kind="categorical", hash_buckets=64),
        "category": files.feature_config(kind="categorical"),
        "price": files.feature_config(kind="dense", normalize="log1p", missing="mean"),
        "age": files.feature_config(kind="dense", normalize="standard"),
        "tags": files.feature_config(kind="multi_hot", separator="|"),
        "title": files.feature_config(kind="text"),
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the example run, ``"smoke"`` for a seconds-long one."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    schema = features()
    # A text column feeds the model through text.features only (not as an id of its own).
    inputs = tuple(name for name, spec in schema.items() if spec.kind != "text")
    c = base.base_config(TASKS, inputs, early_stopping_metric="click/auc")
    c.data = files.data_config(
        train=str(SAMPLE / "train.csv"),
        test=str(SAMPLE / "test.csv"),
        validation_fraction=0.2,
        labels={
            "click": dict(kind="binary"),
            "like": dict(kind="binary", column="rating", threshold=3.0),
            "rating": dict(kind="regression", min=1.0, max=5.0),
            "actions": dict(kind="multilabel", classes=("cart", "share", "save")),
        },
    )
    c.features = ml_collections.ConfigDict(schema)
    c.model.update(embed_dim=8, trunk_hidden=(32,), tower_hidden=(16,), pairwise_dots=False)
    c.train.update(
        batch_size=64, eval_batch_size=256, num_steps=200, eval_every=50, checkpoint_every=50,
        log_every=25,
    )  # fmt: skip
    c.optim.warmup_steps = 20
    if arg == "smoke":
        c.train.update(num_steps=20, eval_every=10, checkpoint_every=10, log_every=5)
        c.optim.warmup_steps = 4
    c.lock()
    return c
