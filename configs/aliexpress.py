"""AliExpress (Li et al., AITM; the MTReclib benchmark): CTR and CTCVR on one country's
search logs, read as published.

``data.data_dir`` is one country's folder (AliExpress_NL, _ES, _FR or _US) holding its
``train.csv`` and ``test.csv``: ``search_id``, 16 integer-coded categorical features, 63
numerical features, labels ``click`` and ``conversion``. Tasks as MTReclib and AITM report
them: ``ctr`` (click) and ``ctcvr`` (conversion, which implies a click) over every
impression; the validation split is 10% of train drawn with the seed. Categorical codes get
a vocabulary from train (codes unseen in train share row 0); numerical features are fed as
they are (already scaled by the publisher).

Run:
  python run.py --config=configs/aliexpress.py --config.data.data_dir=/data/AliExpress_NL
Seconds-long smoke run on the 100-row sample in tests/data/aliexpress_sample/:
  python run.py --config=configs/aliexpress.py:smoke --workdir=runs/aliexpress_smoke
"""

from __future__ import annotations

import pathlib

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data import files

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "aliexpress_sample"
TASKS = ("ctr", "ctcvr")
CATEGORICAL = tuple(f"categorical_{i}" for i in range(1, 17))
NUMERICAL = tuple(f"numerical_{i}" for i in range(1, 64))
HINT = (
    "AliExpress: set data.data_dir to one country's folder (AliExpress_NL, _ES, _FR or _US "
    "of the AITM / MTReclib release) holding train.csv and test.csv"
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for a country's full data (``data.data_dir``), ``"smoke"`` for the
    sample in tests/data/aliexpress_sample/."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    c = base.base_config(TASKS, CATEGORICAL + NUMERICAL, early_stopping_metric="ctr/auc")
    c.data = files.data_config(
        dataset_name="aliexpress",
        hint=HINT,
        train="train.csv",
        test="test.csv",
        validation_fraction=0.1,
        labels={
            "ctr": dict(kind="binary", column="click"),
            "ctcvr": dict(kind="binary", column="conversion"),
        },
    )
    c.features = ml_collections.ConfigDict(
        {
            **{name: files.feature_config(kind="categorical") for name in CATEGORICAL},
            **{name: files.feature_config(kind="dense", missing="zero") for name in NUMERICAL},
        }
    )
    # MTReclib's setting: embeddings of width 128 would be its choice on the full data; 16
    # keeps a CPU run reasonable. Batch 2048, Adam at 1e-3 for the dense layers.
    c.model.update(embed_dim=16, pairwise_dots=False, trunk_hidden=(128, 64), tower_hidden=(64,))
    c.optim.update(learning_rate=1e-3)
    c.train.update(batch_size=2048, eval_batch_size=8192, num_steps=20_000, eval_every=1000,
                   checkpoint_every=1000, patience=5)  # fmt: skip
    if arg == "smoke":
        c.data.data_dir = str(SAMPLE)
        c.model.update(embed_dim=4, trunk_hidden=(16,), tower_hidden=(8,))
        c.train.update(batch_size=16, eval_batch_size=64, num_steps=20, eval_every=10,
                       checkpoint_every=10, log_every=5, patience=100)  # fmt: skip
        c.optim.warmup_steps = 4
        # The sample's 10 validation rows hold no click: select on logloss, always defined.
        c.train.early_stopping_metric = "ctr/logloss"
    c.lock()
    return c
