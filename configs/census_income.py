"""UCI census-income (KDD), the MMoE paper's real-data benchmark, read as published.

``data.data_dir`` holds ``census-income.data`` (train) and ``census-income.test`` (test):
no header, comma + space separated, ``?`` for missing, 42 columns (``COLUMNS``; a copy with
a leading row id, as DeepCTR's sample has, is read too). Or name the files with
``data.train_file`` / ``data.test_file``. The instance weight is neither an input nor used
as a weight (the MMoE paper does not weight). Validation: 10% of train drawn with the seed.

Variants (the paper's two task groups; the label columns are never inputs):
- ``:income_marital`` (default): income > 50K and marital status "Never married";
- ``:education_marital``: education at least a bachelor's degree and never married;
- ``:smoke``: the 200-row sample in tests/data/census_income_sample/, split at random.

Run:
  python run.py --config=configs/census_income.py --config.data.data_dir=/data/census
"""

from __future__ import annotations

import pathlib

import ml_collections

from mtl_jax import config_defaults as base
from mtl_jax.data import files

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "census_income_sample"
COLUMNS = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
    "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin",
    "sex", "union_member", "unemp_reason", "full_or_part_emp", "capital_gains",
    "capital_losses", "stock_dividends", "tax_filer_stat", "region_prev_res", "state_prev_res",
    "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa", "mig_chg_reg",
    "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18",
    "country_father", "country_mother", "country_self", "citizenship", "own_or_self",
    "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
)  # fmt: skip
DENSE = {  # the continuous columns: money in log1p, counts standardised
    "age": "standard", "wage_per_hour": "log1p", "capital_gains": "log1p",
    "capital_losses": "log1p", "stock_dividends": "log1p", "num_emp": "standard",
    "weeks_worked": "standard",
}  # fmt: skip
BACHELOR_OR_MORE = (
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)
EDUCATION = (  # every value the data has, so that an unexpected one is an error
    "Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade", "5th or 6th grade",
    "7th and 8th grade", "9th grade", "10th grade", "11th grade", "12th grade no diploma",
    "High school graduate", "Some college but no degree", "Associates degree-occup /vocational",
    "Associates degree-academic program", *BACHELOR_OR_MORE,
)  # fmt: skip
HINT = (
    "census-income: set data.data_dir to the folder holding census-income.data and "
    "census-income.test (UCI KDD archive), or data.train_file / data.test_file"
)
VARIANTS = ("", "income_marital", "education_marital", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: a task group (``income_marital``, the default, or ``education_marital``) or
    ``smoke`` (the income/marital group on the sample)."""
    if (arg or "") not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid: {VARIANTS}")
    never_married = dict(kind="binary", column="marital_stat", equals="Never married")
    if arg == "education_marital":
        tasks = ("education", "marital")
        labels = {
            "education": dict(
                kind="binary",
                column="education",
                value_map={v: float(v in BACHELOR_OR_MORE) for v in EDUCATION},
            ),
            "marital": never_married,
        }
    else:
        tasks = ("income", "marital")
        labels = {
            "income": dict(
                kind="binary", column="income_50k", value_map={"- 50000.": 0.0, "50000+.": 1.0}
            ),
            "marital": never_married,
        }
    used = {spec["column"] for spec in labels.values()} | {"instance_weight"}
    inputs = tuple(c for c in COLUMNS if c not in used)
    c = base.base_config(tasks, inputs, early_stopping_metric=f"{tasks[0]}/auc")
    c.data = files.data_config(
        dataset_name="census_income",
        hint=HINT,
        header=False,
        columns=COLUMNS,
        delimiter=",",
        validation_fraction=0.1,
        labels=labels,
    )
    c.data.train_file = "census-income.data"
    c.data.test_file = "census-income.test"
    c.data.train = c.data.get_ref("train_file")
    c.data.test = c.data.get_ref("test_file")
    c.features = ml_collections.ConfigDict(
        {
            name: files.feature_config(kind="dense", normalize=DENSE[name])
            if name in DENSE
            else files.feature_config(kind="categorical")
            for name in inputs
        }
    )
    # The MMoE paper's census setting: 8 experts of 8 units, towers of 8, Adam.
    c.model.update(trunk="mmoe", num_experts=8, trunk_hidden=(8,), tower_hidden=(8,),
                   embed_dim=4, pairwise_dots=False)  # fmt: skip
    c.optim.update(learning_rate=1e-3)
    c.train.update(batch_size=1024, eval_batch_size=8192, num_steps=4000, eval_every=200,
                   checkpoint_every=400, patience=10)  # fmt: skip
    if arg == "smoke":
        c.data.train_file = ""
        c.data.test_file = ""
        c.data.file = str(SAMPLE / "census-income.sample")
        c.data.update(split="random", validation_fraction=0.25, test_fraction=0.25)
        c.train.update(batch_size=32, eval_batch_size=128, num_steps=20, eval_every=10,
                       checkpoint_every=10, log_every=5, patience=100)  # fmt: skip
        c.optim.warmup_steps = 4
    c.lock()
    return c
