"""Prepared shards (mtl_jax/data/prepare.py) and training from them
(mtl_jax/data/streaming.py): the same encoding as the in-memory file dataset, shuffling
that covers every row once per epoch, exact resume, per-process shards, named errors."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from configs import files as files_config
from mtl_jax.data import files, load_dataset
from mtl_jax.data.pipeline import train_iterator
from mtl_jax.data.prepare import prepare
from mtl_jax.data.streaming import StreamedSplit, load_prepared
from mtl_jax.errors import ConfigError, DataFormatError

SAMPLE = pathlib.Path(__file__).parent / "data" / "files_sample"


def _config(**data):
    config = files_config.get_config("smoke").unlock()
    config.data.update(data)
    return config


def _prepare(config, out, **kw):
    data = {k: v for k, v in config.data.items() if k not in ("prepared", "window_blocks")}
    return prepare(data, config.features, config.seed, out, **kw)


def _explicit():
    """Every split from its own file, so the in-memory and prepared splits hold the same rows."""
    return _config(validation=str(SAMPLE / "test.csv"))


def test_prepared_splits_and_encoders_equal_the_in_memory_ones(tmp_path):
    config = _explicit()
    # Chunks of 97 rows: vocabularies, hashing and statistics are fitted across chunk
    # boundaries and must come out as from one whole table.
    _prepare(config, tmp_path / "p", shards=1, block_rows=50, chunk_rows=97)
    memory = load_dataset(config.data, config.seed, config.features)
    config.data.prepared = str(tmp_path / "p")
    streamed = load_dataset(config.data, config.seed, config.features)
    assert streamed.features == memory.features and streamed.tasks == memory.tasks
    assert streamed.texts == memory.texts
    for split in ("validation", "test"):
        for group in ("features", "labels", "masks"):
            want, got = getattr(memory.split(split), group), getattr(streamed.split(split), group)
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=f"{split}/{k}")
    # One shard: its blocks hold the train rows in file order.
    blocks = streamed.train.blocks
    rows = [blocks.read(i) for i in range(len(blocks))]
    assert len(streamed.train) == len(memory.train) == 800
    for k, want in memory.train.features.items():
        got = np.concatenate([r[f"features/{k}"] for r in rows])
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=k)
    for task in memory.tasks:
        np.testing.assert_allclose(streamed.train.prior(task), memory.train.prior(task))
    memory.encoding.save(tmp_path / "m")
    want = json.loads((tmp_path / "m" / "features.json").read_text())
    got = json.loads((tmp_path / "p" / "features" / "features.json").read_text())
    for name in want:
        for key, value in want[name].items():
            assert got[name][key] == pytest.approx(value, rel=1e-9), (name, key)


def _row_ids(tmp_path, n=1000):
    """A file whose dense column ``rid`` names each row, and the dataset prepared from it."""
    lines = ["user,rid,click"] + [f"u{i % 37},{i},{i % 3 == 0:d}" for i in range(n)]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    config = _config(train=str(tmp_path / "rows.csv"), test=str(tmp_path / "rows.csv"))
    config.features = {
        "user": files.feature_config(kind="categorical"),
        "rid": files.feature_config(kind="dense"),
    }
    config.data.labels = {"click": files.label_config(kind="binary")}
    return config


def test_an_epoch_reads_every_train_row_once_and_resumes_exactly(tmp_path):
    config = _row_ids(tmp_path)
    _prepare(config, tmp_path / "p", shards=4, block_rows=32, chunk_rows=100)
    ds = load_prepared(str(tmp_path / "p"), config.seed)
    train_rows = len(ds.train)
    assert 750 < train_rows < 850  # validation carved by a seeded hash of the row: ~20%
    batch, per_epoch = 64, train_rows // 64

    def batches(it, n):
        return [next(it)["features"]["rid"][:, 0].astype(int) for _ in range(n)]

    seen = np.concatenate(
        batches(
            train_iterator(
                ds.train, batch_size=batch, num_steps=3 * per_epoch, seed=5, window_blocks=3
            ),
            per_epoch,
        )
    )
    assert len(np.unique(seen)) == len(seen) == per_epoch * batch  # no row twice in an epoch
    validation = set(ds.validation.features["rid"][:, 0].astype(int))
    assert not validation & set(seen.tolist())
    assert len(validation) + train_rows == 1000
    # Shuffled across blocks, not block by block: a batch spans several 32-row blocks.
    assert len(np.unique(seen[:batch] // 32)) > 3
    # Exact resume: a new iterator set to the state after 7 steps yields the same batches.
    full = train_iterator(ds.train, batch_size=batch, num_steps=40, seed=5, window_blocks=3)
    first = batches(full, 7)
    state = full.get_state()
    rest = batches(full, 25)
    resumed = train_iterator(ds.train, batch_size=batch, num_steps=40, seed=5, window_blocks=3)
    resumed.set_state(state)
    for a, b in zip(batches(resumed, 25), rest, strict=True):
        np.testing.assert_array_equal(a, b)
    other = train_iterator(ds.train, batch_size=batch, num_steps=40, seed=6, window_blocks=3)
    assert not np.array_equal(batches(other, 1)[0], first[0])


def test_each_process_reads_its_own_shards(tmp_path, monkeypatch):
    config = _row_ids(tmp_path)
    _prepare(config, tmp_path / "p", shards=4, block_rows=32, chunk_rows=100)
    rows = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        ds = load_prepared(str(tmp_path / "p"), config.seed)
        local = next(train_iterator(ds.train, batch_size=64, num_steps=1, seed=0))
        assert local["features"]["rid"].shape == (32, 1)  # half the global batch
        blocks = ds.train.blocks
        rows.append(
            {int(r) for i in range(len(blocks)) for r in blocks.read(i)["features/rid"][:, 0]}
        )
    assert not rows[0] & rows[1]
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ConfigError, match="4 train shards do not divide over 3 JAX processes"):
        load_prepared(str(tmp_path / "p"), config.seed)


def test_prepared_data_is_checked_against_the_run_config(tmp_path):
    config = _explicit()
    _prepare(config, tmp_path / "p", shards=2, block_rows=64)
    config.data.prepared = str(tmp_path / "p")
    config.features.price.normalize = "standard"
    config.data.labels.like.threshold = 4.0
    with pytest.raises(
        ConfigError,
        match=r"features.price.normalize: prepared 'log1p', config "
        r"'standard'; labels.like.threshold: prepared 3.0, config 4.0",
    ):
        load_dataset(config.data, config.seed, config.features)
    config.data.prepared = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"holds no manifest.json; write it with"):
        load_dataset(config.data, config.seed, config.features)


def test_prepare_writes_all_or_nothing(tmp_path):
    config = _explicit()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists; prepared data is never written over"):
        _prepare(config, tmp_path / "taken")
    bad = tmp_path / "bad.csv"
    lines = (SAMPLE / "test.csv").read_text().splitlines()
    lines[150] = lines[150].replace(",games,", ",games,").rsplit(",", 3)[0] + ",7,5,"
    bad.write_text("\n".join(lines) + "\n")
    config.data.test = str(bad)
    with pytest.raises(DataFormatError, match=r"bad.csv, line 151, column 'click': label 7"):
        _prepare(config, tmp_path / "out", chunk_rows=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "taken"]  # no leftovers
    config.data.update(train="", validation="", test="", file=str(SAMPLE / "train.csv"))
    config.data.split = "time"
    config.data.split_column = "ts"
    with pytest.raises(ConfigError, match="split=.time. cannot be prepared in one pass"):
        _prepare(config, tmp_path / "out")


def test_one_file_splits_by_user_without_sharing_users(tmp_path):
    config = _config(train="", test="", file=str(SAMPLE / "train.csv"), split="user",
                     split_column="user", test_fraction=0.2)  # fmt: skip
    manifest = _prepare(config, tmp_path / "p", shards=2, block_rows=64)
    assert sum(s["rows"] for s in manifest["splits"].values()) == 800
    ds = load_prepared(str(tmp_path / "p"), config.seed)
    blocks = ds.train.blocks
    train_users = {int(u) for i in range(len(blocks)) for u in blocks.read(i)["features/user"]}
    # Users are encoded by the train vocabulary: a held-out user is row 0 everywhere else.
    assert 0 not in train_users
    assert set(ds.test.features["user"].tolist()) == {0}
    assert set(ds.validation.features["user"].tolist()) == {0}


@pytest.mark.slow
def test_a_run_from_prepared_shards_resumes_exactly(tmp_path):
    """20 steps straight == 10 steps, stop, resume for 10 (an epoch is about 10 steps here,
    so both runs cross epoch boundaries of the streamed split)."""
    from mtl_jax.train import train_and_evaluate

    config = _config()
    _prepare(config, tmp_path / "p", shards=2, block_rows=64)
    config.data.prepared = str(tmp_path / "p")
    config.train.log_every = 1
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert set(straight["test"]) == {"click", "like", "rating", "actions"}
    assert train_and_evaluate(config, str(tmp_path / "split"), max_steps_this_run=10) is None
    resumed = train_and_evaluate(config, str(tmp_path / "split"))
    assert resumed["test"] == straight["test"]

    def train_losses(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]

    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "straight")
    assert (tmp_path / "split" / "features" / "features.json").is_file()
    assert isinstance(load_dataset(config.data, config.seed, config.features).train, StreamedSplit)


def test_a_test_file_with_other_columns_is_named(tmp_path):
    lines = (SAMPLE / "test.csv").read_text().splitlines()
    lines[0] = lines[0].replace("age", "years")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    config = _config(test=str(tmp_path / "t.csv"))
    with pytest.raises(DataFormatError, match=r"t.csv: columns .*'years'.* differ from the train"):
        _prepare(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_columns_whose_type_changes_late_in_a_big_csv_stream(tmp_path):
    """A CSV read in chunks whose price turns fractional and category turns from numbers
    into words after the first megabyte: chunks already read stay, the rest reads as text,
    and the prepared data equals the in-memory dataset."""
    header = "user,item,category,price,age,ts,tags,title,click,rating,actions"
    rows = [header] + [
        f"u{i % 50},{i % 97},{i % 7},{i % 9},30,{i},gift,t{i % 11},{i % 2},{1 + i % 5},"
        + ("cart" if i % 2 else "")
        for i in range(50000)
    ]
    rows += ["u1,5,kitchen,2.5,30,1,sale,t3,1,4,share"] * 3
    (tmp_path / "big.csv").write_text("\n".join(rows) + "\n")
    config = _config(train=str(tmp_path / "big.csv"), validation=str(SAMPLE / "test.csv"))
    _prepare(config, tmp_path / "p", shards=1, block_rows=4096, chunk_rows=5000)
    memory = load_dataset(config.data, config.seed, config.features)
    streamed = load_prepared(str(tmp_path / "p"), config.seed)
    blocks = streamed.train.blocks
    for name in ("price", "category", "item"):
        got = np.concatenate([blocks.read(i)[f"features/{name}"] for i in range(len(blocks))])
        np.testing.assert_allclose(got, memory.train.features[name], rtol=1e-6, err_msg=name)
    assert memory.encoding.features["category"].values[-1] == "kitchen"
