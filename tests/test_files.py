"""File datasets (mtl_jax/data/files.py, configs/files.py): schema, encoders, bad input."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from configs import files as files_config
from mtl_jax.data import files, load_dataset
from mtl_jax.data.hashing import HashedIds

SAMPLE = pathlib.Path(__file__).parent / "data" / "files_sample"
HEADER = "user,item,category,price,age,ts,click,rating"


def _config(full: bool = False):
    """The template's smoke config; without ``full``, only the columns of ``HEADER`` (the
    hand-written files below): no tags, title or actions."""
    config = files_config.get_config("smoke").unlock()
    if not full:
        for name in ("tags", "title"):
            del config.features[name]
        del config.data.labels["actions"]
        config.tasks = tuple(t for t in config.tasks if t != "actions")
        config.input_features = tuple(f for f in config.input_features if f != "tags")
    return config


def _dataset(config):
    return load_dataset(config.data, config.seed, config.features)


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_sample_encodes_by_the_schema():
    config = _config(full=True)
    ds = _dataset(config)
    specs = {f.name: f for f in ds.features}
    assert specs["item"].vocab_size == 65  # 64 buckets + the out-of-vocabulary row
    assert specs["category"].vocab_size == 7  # 6 categories + row 0
    assert specs["price"].is_dense and specs["age"].is_dense
    assert specs["tags"].bag_size == 5 and specs["tags"].vocab_size == 6  # 5 tags + row 0
    assert sorted(t.name for t in ds.tasks) == ["actions", "click", "like", "rating"]
    assert ds.sizes() == {"train": 640, "validation": 160, "test": 200}
    # like = rating > 3 where a rating exists; rows without one are masked.
    train = ds.train
    rated = train.masks["rating"] > 0
    np.testing.assert_array_equal(train.masks["like"], train.masks["rating"])
    np.testing.assert_array_equal(train.labels["like"][rated], train.labels["rating"][rated] > 3)
    assert rated.sum() == train.labels["click"].sum()  # ratings only for clicks
    # age standardised with train statistics: mean 0, std 1 over train.
    age = train.features["age"][:, 0]
    assert abs(age.mean()) < 1e-5 and abs(age.std() - 1) < 1e-4
    # Missing prices take the train mean of log1p(price).
    enc = ds.encoding.features["price"]
    assert enc.normalize == "log1p" and np.isclose(enc.mean, 3.0, atol=0.5)


def test_unseen_values_map_to_the_out_of_vocabulary_row(tmp_path):
    config = _config()
    train = _write(tmp_path, "train.csv", [HEADER, "u1,5,a,1.0,30,1,1,4", "u2,6,b,2.0,40,2,0,"])
    test = _write(tmp_path, "test.csv", [HEADER, "u3,7,c,3.0,50,3,1,5", "u1,6,a,,30,4,0,"])
    config.data.update(train=train, validation=train, test=test)
    ds = _dataset(config)
    feats = ds.test.features
    assert feats["user"].tolist() == [0, 1]  # u3 unseen; u1 is row 1 (first seen)
    assert feats["category"].tolist() == [0, 1]
    item = ds.encoding.features["item"]
    assert isinstance(item, HashedIds)
    assert feats["item"][0] == 0 and feats["item"][1] == item.encode(np.array([6]))[0] > 0
    np.testing.assert_allclose(feats["price"][1, 0], np.mean(np.log1p([1.0, 2.0])), rtol=1e-6)


def test_min_count_sends_rare_values_to_row_0(tmp_path):
    config = _config()
    rows = [HEADER] + [f"u1,5,{c},1.0,30,1,1,4" for c in "aab"]
    path = _write(tmp_path, "tr.csv", rows)
    config.data.update(train=path, validation=path, test=path)
    config.features.category.min_count = 2
    ds = _dataset(config)
    assert ds.train.features["category"].tolist() == [1, 1, 0]


def test_parquet_reads_like_csv(tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        pq.write_table(pacsv.read_csv(SAMPLE / f"{split}.csv"), tmp_path / f"{split}.parquet")
    config = _config(full=True)
    csv_ds = _dataset(config)
    config.data.update(train=str(tmp_path / "train.parquet"), test=str(tmp_path / "test.parquet"))
    pq_ds = _dataset(config)
    for name, column in csv_ds.test.features.items():
        np.testing.assert_allclose(pq_ds.test.features[name], column, err_msg=name)
    for name, column in csv_ds.test.labels.items():
        np.testing.assert_array_equal(pq_ds.test.labels[name], column)


def _raw_rows(split: str) -> list[dict[str, str]]:
    import csv

    with (SAMPLE / f"{split}.csv").open() as f:
        return list(csv.DictReader(f))


def test_lists_and_texts_encode_row_by_row():
    """Tags (multi_hot), actions (multilabel) and titles (text) of the test file, against
    the raw cells read with the csv module."""
    ds = _dataset(_config(full=True))
    rows, test = _raw_rows("test"), ds.test
    vocab = ds.encoding.features["tags"].ids.values
    texts = ds.texts["title"]
    classes = ("cart", "share", "save")
    for n, row in enumerate(rows):
        tags = [t for t in row["tags"].split("|") if t]
        want = [vocab.index(t) + 1 if t in vocab else 0 for t in tags]
        assert test.features["tags"][n, : len(tags)].tolist() == want, n
        assert test.features["tags/mask"][n].tolist() == [1.0] * len(tags) + [0.0] * (5 - len(tags))
        assert texts[test.features["title"][n]] == row["title"]
        if row["actions"] == "":
            assert test.masks["actions"][n] == 0
        else:
            on = [c in row["actions"].split("|") for c in classes]
            assert test.masks["actions"][n] == 1 and test.labels["actions"][n].tolist() == on
    # Texts of every split have ids (a test-only title is still read); "" is id 0.
    assert texts[0] == "" and set(r["title"] for r in rows) <= set(texts)


def test_parquet_list_columns_read_like_separated_strings(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        table = pacsv.read_csv(SAMPLE / f"{split}.csv")
        for name in ("tags", "actions"):
            cells = table.column(name).to_pylist()
            lists = [
                None if not c else ([] if c == "none" else [e for e in c.split("|") if e])
                for c in cells
            ]
            index = table.column_names.index(name)
            table = table.set_column(index, name, pa.array(lists, pa.list_(pa.string())))
        pq.write_table(table, tmp_path / f"{split}.parquet")
    config = _config(full=True)
    csv_ds = _dataset(config)
    config.data.update(train=str(tmp_path / "train.parquet"), test=str(tmp_path / "test.parquet"))
    pq_ds = _dataset(config)
    for name in ("tags", "tags/mask"):
        np.testing.assert_array_equal(pq_ds.test.features[name], csv_ds.test.features[name])
    np.testing.assert_array_equal(pq_ds.test.labels["actions"], csv_ds.test.labels["actions"])
    np.testing.assert_array_equal(pq_ds.test.masks["actions"], csv_ds.test.masks["actions"])


def test_max_length_keeps_the_first_elements(tmp_path):
    config = _config(full=True)
    config.features.tags.max_length = 2
    ds = _dataset(config)
    rows = _raw_rows("test")
    for n, row in enumerate(rows[:50]):
        tags = [t for t in row["tags"].split("|") if t][:2]
        assert ds.test.features["tags/mask"][n].sum() == len(tags)
    assert ds.test.features["tags"].shape == (200, 2)


@pytest.mark.parametrize("rule", ["random", "time", "user"])
def test_one_file_split_by_rule(rule):
    config = _config()
    config.data.update(
        train="", test="", file=f"{SAMPLE}/*.csv", split=rule, test_fraction=0.2,
        split_column={"random": "", "time": "ts", "user": "user"}[rule],
    )  # fmt: skip
    ds = _dataset(config)
    assert sum(ds.sizes().values()) == 1000
    table = files.load_tables(config.data, config.seed)
    if rule == "time":
        assert table[0].columns["ts"].max() < table[1].columns["ts"].min()
        assert table[1].columns["ts"].max() < table[2].columns["ts"].min()
    if rule == "user":
        users = [set(t.columns["user"]) for t in table]
        assert not (users[0] & users[1]) and not (users[0] & users[2])


@pytest.mark.slow
def test_the_template_trains_and_saves_its_encoders(tmp_path):
    from mtl_jax.train import train_and_evaluate

    results = train_and_evaluate(_config(full=True), str(tmp_path / "w"))
    assert set(results["test"]) == {"click", "like", "rating", "actions"}
    assert set(results["test"]["actions"]) >= {"micro_auc", "macro_auc"}
    saved = json.loads((tmp_path / "w" / "features" / "features.json").read_text())
    assert saved["item"] == {"column": "item", "kind": "categorical", "hash_buckets": 64}
    assert saved["tags"]["kind"] == "multi_hot" and saved["tags"]["max_length"] == 5
    assert saved["title"]["texts"][0] == "" and len(saved["title"]["texts"]) == 91
    assert saved["category"]["vocabulary"][0] == "games"  # first seen in train
    loaded = HashedIds.load(tmp_path / "w" / "features" / "item.hash.npz")
    assert loaded.buckets == 64 and len(loaded.known) > 50


GOOD = [HEADER, "u1,5,a,1.0,30,1,1,4", "u2,6,b,2.0,40,2,0,"]


def _bad(tmp_path, train=None, test=None, validation=None, **config_updates):
    config = _config()
    config.data.update(
        train=_write(tmp_path, "train.csv", train or GOOD),
        validation=_write(tmp_path, "validation.csv", validation or GOOD),
        test=_write(tmp_path, "test.csv", test or GOOD),
    )
    for key, value in config_updates.items():
        node, _, leaf = key.replace("__", ".").rpartition(".")
        target = config
        for part in node.split("."):
            target = target[part]
        target[leaf] = value
    return config


ROW = "u3,7,c,1.0,30,3,1,4"  # a good row; the cases below spoil one field
GOOD3 = [HEADER, "u1,5,a,1.0,30,1,1,2", "u2,6,b,2.0,40,2,0,"]  # ratings as 3 classes
CLASSES = {"data__labels__rating__kind": "multiclass", "data__labels__rating__num_classes": 3,
           "data__labels__rating__min": None, "data__labels__rating__max": None,
           "data__labels__like__threshold": 1.0, "validation": GOOD3}  # fmt: skip
Bad = files.DataFormatError
Cfg = files.ConfigError
BAD_INPUTS = [  # (what, files and config keys, error class, message)
    ("missing column", dict(train=["user,item", "u1,5"], test=["user,item", "u1,5"],
     validation=["user,item", "u1,5"]),
     Bad, r"train.csv: no column 'age' \(for dense feature 'age'\); columns: \['user', 'item'\]"),
    ("test header differs", dict(test=[HEADER.replace("age", "years"), ROW]),
     Bad, r"test.csv: columns .* differ from the train file"),
    ("validation header differs", dict(validation=[HEADER.replace("ts", "time"), ROW]),
     Bad, r"validation.csv: columns .* differ from the train file"),
    ("non-numeric dense", dict(train=GOOD + ["u3,7,c,cheap,30,3,1,4"]),
     Bad, r"train.csv, line 4, column 'price': 'cheap' is not a number"),
    ("infinite dense", dict(test=GOOD + ["u3,7,c,inf,30,3,1,4"]),
     Bad, r"test.csv, line 4, column 'price': inf is not finite"),
    ("dense missing, policy error", dict(train=GOOD + ["u3,7,c,,30,3,1,4"],
     features__price__missing="error"),
     Bad, r"train.csv, line 4, column 'price': missing value \(features.price.missing"),
    ("rating out of range", dict(train=GOOD + ["u3,7,c,1.0,30,3,1,7"]),
     Bad, r"train.csv, line 4, column 'rating': label 7 of regression task 'rating' is not a "
          r"number in \[1.0, 5.0\]"),
    ("rating below range", dict(validation=GOOD + ["u3,7,c,1.0,30,3,1,0"]),
     Bad, r"validation.csv, line 4, column 'rating': label 0 of regression"),
    ("non-numeric regression label", dict(train=GOOD + ["u3,7,c,1.0,30,3,1,five"]),
     Bad, r"line 4, column 'rating': 'five' is not a number \(task 'like'\)"),
    ("binary label not 0/1", dict(test=GOOD + ["u3,7,c,1.0,30,3,2,4"]),
     Bad, r"test.csv, line 4, column 'click': label 2 of binary task 'click' is not 0 or 1"),
    ("binary label a word", dict(train=GOOD + ["u3,7,c,1.0,30,3,yes,4"]),
     Bad, r"line 4, column 'click': 'yes' is not a number \(task 'click'\)"),
    ("unmapped label value", dict(train=GOOD + ["u3,7,c,1.0,30,3,maybe,4"],
     data__labels__click__value_map=(("0", 0.0), ("1", 1.0))),
     Bad, r"line 4, column 'click': 'maybe' is not in data.labels.click.value_map \['0', '1'\]"),
    ("class id beyond the classes", dict(train=GOOD3 + ["u3,7,c,1.0,30,3,1,4"], test=GOOD3,
     **CLASSES),
     Bad, r"line 4, column 'rating': label 4 of multiclass task 'rating' is not a class id 0..2"),
    ("fractional class id", dict(train=GOOD3 + ["u3,7,c,1.0,30,3,1,1.5"], test=GOOD3,
     **CLASSES),
     Bad, r"line 4, column 'rating': label 1.5 of multiclass task 'rating'"),
    ("negative class id", dict(train=GOOD3, test=GOOD3 + ["u3,7,c,1.0,30,3,1,-1"], **CLASSES),
     Bad, r"test.csv, line 4, column 'rating': label -1 of multiclass"),
    ("empty file", dict(train=[""]), Bad, r"train.csv: not readable as CSV|the file is empty"),
    ("header and no rows", dict(test=[HEADER]),
     Bad, r"test.csv: the file has a header but no rows"),
    ("short row", dict(train=GOOD + ["u3,7,c"]), Bad, r"train.csv: not readable as CSV"),
    ("long row", dict(train=GOOD + [ROW + ",extra"]), Bad, r"train.csv: not readable as CSV"),
    ("all-missing task", dict(train=[HEADER, "u1,5,a,1.0,30,1,1,", "u2,6,b,2.0,40,2,0,"]),
     Bad, r"task 'like': every train row's label \(column 'rating'\) is missing"),
    ("negative hashed id", dict(train=[HEADER, "u1,-5,a,1.0,30,1,1,4"]),
     ValueError, r"item: negative id -5 at row 0"),
    ("hash buckets 0", dict(features__item__hash_buckets=0),
     Cfg, r"features.item.hash_buckets must be >= 1, got 0"),
    ("hash buckets negative", dict(features__item__hash_buckets=-2),
     Cfg, r"features.item.hash_buckets must be >= 1, got -2"),
    ("min_count 0", dict(features__category__min_count=0),
     Cfg, r"features.category.min_count must be >= 1, got 0"),
    ("unknown feature kind", dict(features__category__kind="image"),
     Cfg, r"features.category.kind: 'image'; valid: \('categorical', 'dense', 'multi_hot'"),
    ("unknown normalisation", dict(features__price__normalize="zscore"),
     Cfg, r"features.price.normalize: 'zscore'; valid"),
    ("unknown missing policy", dict(features__price__missing="drop"),
     Cfg, r"features.price.missing: 'drop'; valid: \('mean', 'zero', 'error'\)"),
    ("unknown label kind", dict(data__labels__click__kind="ordinal"),
     Cfg, r"data.labels.click.kind: 'ordinal'; valid: \('binary', 'regression', 'multiclass', "
          r"'multilabel'\)"),
    ("unknown split rule", dict(data__file="x.csv", data__train="", data__test="",
     data__validation="", data__split="by_day"),
     Bad, r"data.file: no such file 'x.csv'"),
    ("multilabel class not declared", dict(data__labels__like__kind="multilabel",
     data__labels__like__column="category", data__labels__like__classes=("a", "x")),
     Bad, r"train.csv, line 3, column 'category': 'b' of multilabel task 'like' is not one of "
          r"\['a', 'x'\]"),
    ("multilabel without classes", dict(data__labels__like__kind="multilabel"),
     Cfg, r"data.labels.like \(multilabel\) needs at least 2 classes"),
    ("multilabel id beyond num_classes", dict(data__labels__like__kind="multilabel",
     data__labels__like__column="item", data__labels__like__num_classes=6),
     Bad, r"train.csv, line 3, column 'item': '6' of multilabel task 'like' is not a class id "
          r"0..5"),
    ("negative bag length", dict(features__category__kind="multi_hot",
     features__category__max_length=-1),
     Cfg, r"features.category.max_length must be >= 0, got -1"),
    ("file and train both", dict(data__file="x.csv"),
     Cfg, r"set data.file or data.train/validation/test, not both"),
    ("no test file", dict(data__test=""), Cfg, r"data.train and data.test \(or data.file\)"),
    ("glob matches nothing", dict(data__train="/nonexistent/day_*.csv"),
     Bad, r"data.train: the glob '/nonexistent/day_\*.csv' matches no file"),
    ("no such file", dict(data__test="/nonexistent/test.csv"),
     Bad, r"data.test: no such file '/nonexistent/test.csv'"),
]  # fmt: skip


@pytest.mark.parametrize(
    "what, spec, error, match", BAD_INPUTS, ids=[b[0].replace(" ", "_") for b in BAD_INPUTS]
)
def test_bad_files_are_named_errors(tmp_path, what, spec, error, match):
    assert len(BAD_INPUTS) >= 30
    config = _bad(tmp_path, **spec)
    with pytest.raises(error, match=match):
        _dataset(config)


def test_split_rules_need_their_column(tmp_path):
    path = _write(tmp_path, "all.csv", GOOD + [ROW, "u4,8,d,2.5,33,x,0,"])
    config = _config()
    config.data.update(train="", test="", file=path, split="by_day")
    with pytest.raises(files.ConfigError, match=r"data.split: 'by_day'; valid"):
        _dataset(config)
    config.data.split = "time"
    with pytest.raises(files.ConfigError, match="data.split='time' needs data.split_column"):
        _dataset(config)
    config.data.split_column = "ts"
    with pytest.raises(files.DataFormatError, match=r"all.csv, line 5, column 'ts': 'x' is not"):
        _dataset(config)


def test_bad_paths_and_schemas_are_named(tmp_path):
    config = _bad(tmp_path)
    config.data.train = str(tmp_path / "nothing_*.csv")
    with pytest.raises(files.DataFormatError, match=r"the glob .*nothing_\*.csv' matches no file"):
        _dataset(config)
    config = _bad(tmp_path)
    weird = tmp_path / "train.bin"
    weird.write_bytes(b"\x00\x01")
    config.data.train = str(weird)
    with pytest.raises(files.DataFormatError, match="cannot tell the format"):
        _dataset(config)
    config = _bad(tmp_path)
    (tmp_path / "fake.parquet").write_text("user,item\n")
    config.data.train = str(tmp_path / "fake.parquet")
    with pytest.raises(files.DataFormatError, match="fake.parquet: not readable as Parquet"):
        _dataset(config)
    config = _bad(tmp_path)
    for buckets in (0, -3):
        config.features.item.hash_buckets = buckets
        with pytest.raises(files.ConfigError, match="features.item.hash_buckets must be >= 1"):
            _dataset(config)
    config = _bad(tmp_path, train=[HEADER, "u1,-5,a,1.0,30,1,1,4"])
    with pytest.raises(ValueError, match="item: negative id -5 at row 0"):
        _dataset(config)
    config = _bad(tmp_path)
    config.features.price.normalize = "zscore"
    with pytest.raises(files.ConfigError, match=r"features.price.normalize: 'zscore'; valid"):
        _dataset(config)


@pytest.mark.slow
def test_aliexpress_sample_trains_end_to_end(tmp_path):
    """configs/aliexpress.py:smoke reads the publisher's layout (tests/data/aliexpress_sample)
    and reports both tasks' test AUC."""
    from configs import aliexpress
    from mtl_jax.train import train_and_evaluate

    config = aliexpress.get_config("smoke")
    ds = _dataset(config)
    assert len(ds.features) == 16 + 63
    assert sum(f.is_dense for f in ds.features) == 63
    assert ds.sizes() == {"train": 90, "validation": 10, "test": 100}
    results = train_and_evaluate(config, str(tmp_path / "w"))
    assert 0.0 <= results["test"]["ctr"]["auc"] <= 1.0
    assert 0.0 <= results["test"]["ctcvr"]["auc"] <= 1.0
    # The labels as published: ctcvr = conversion, which implies a click.
    assert ds.test.labels["ctr"].sum() == 6 and ds.test.labels["ctcvr"].sum() == 1


def test_aliexpress_without_its_files_names_them(tmp_path):
    from configs import aliexpress

    config = aliexpress.get_config().unlock()
    config.data.data_dir = str(tmp_path)
    with pytest.raises(
        files.DataFormatError,
        match=r"data.train: no such file '.*train.csv'; AliExpress: set data.data_dir to one "
        r"country's folder",
    ):
        _dataset(config)


@pytest.mark.slow
def test_a_run_whose_validation_metric_is_never_defined_says_so(tmp_path):
    """The AliExpress sample's validation rows hold no click, so validation ctr/auc is
    undefined at every step: a named error, not a missing-checkpoint traceback."""
    from configs import aliexpress
    from mtl_jax.configlib import ConfigError
    from mtl_jax.train import train_and_evaluate

    config = aliexpress.get_config("smoke").unlock()
    config.train.early_stopping_metric = "ctr/auc"
    with pytest.raises(ConfigError, match="no validation step gave a finite ctr/auc"):
        train_and_evaluate(config, str(tmp_path / "w"))


@pytest.mark.slow
def test_census_income_sample_trains_end_to_end(tmp_path):
    """configs/census_income.py:smoke: the published format (no header, ', ' separators,
    '?' for missing; DeepCTR's copy with a leading row id), both tasks' test AUC."""
    from configs import census_income
    from mtl_jax.train import train_and_evaluate

    config = census_income.get_config("smoke")
    results = train_and_evaluate(config, str(tmp_path / "w"))
    assert set(results["test"]) == {"income", "marital"}
    assert all(0.0 <= results["test"][t]["auc"] <= 1.0 for t in ("income", "marital"))


def test_census_income_task_groups_read_their_labels():
    from configs import census_income

    tables = None
    for group, tasks in (("income_marital", ("income", "marital")),
                         ("education_marital", ("education", "marital"))):  # fmt: skip
        config = census_income.get_config(group).unlock()
        config.data.update(train_file="", test_file="", split="random")
        config.data.file = str(pathlib.Path(census_income.SAMPLE) / "census-income.sample")
        ds = _dataset(config)
        assert [t.name for t in ds.tasks] == list(tasks)
        inputs = {f.name for f in ds.features}
        assert "marital_stat" not in inputs and "instance_weight" not in inputs
        assert ("education" in inputs) == (group == "income_marital")
        tables = files.load_tables(config.data, config.seed)
    # Strings come stripped of the separator's space; '?' is missing.
    everything = np.concatenate([t.columns["marital_stat"] for t in tables])
    assert "Never married" in set(everything)
    assert None in set(np.concatenate([t.columns["mig_chg_msa"] for t in tables]))
    all_rows = np.concatenate([t.columns["row_id"] for t in tables])
    assert len(all_rows) == 200 and all_rows[0] != 62  # the leading id, not the age


def test_census_income_without_its_files_names_them(tmp_path):
    from configs import census_income

    config = census_income.get_config().unlock()
    config.data.data_dir = str(tmp_path)
    with pytest.raises(files.DataFormatError, match=r"census-income.data'; census-income: set"):
        _dataset(config)


def test_a_number_column_with_decimals_only_late_in_a_big_csv_reads(tmp_path):
    """pyarrow types a CSV column from its first block: a price column that is whole
    numbers for the first megabytes and then "2.5" must still read (it is a dense
    feature, so it is read as floats from the start)."""
    rows = [HEADER] + [
        f"u{i % 50},{i % 97},c{i % 5},{i % 9},30,{i},{i % 2},{1 + i % 5}" for i in range(60000)
    ]
    rows.append("u1,5,a,2.5,30,1,1,4")
    path = _write(tmp_path, "big.csv", rows)
    config = _config()
    config.data.update(train=path, validation=path, test=_write(tmp_path, "t.csv", GOOD))
    ds = _dataset(config)
    assert len(ds.train) == 60001
    np.testing.assert_allclose(
        ds.encoding.features["price"].mean,
        np.mean(np.log1p([i % 9 for i in range(60000)] + [2.5])),
        rtol=1e-9,
    )
