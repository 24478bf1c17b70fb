"""MovieLens-100K parsing (both layouts), malformed rows, and the exact split rule."""

import math
import pathlib

import numpy as np
import pytest

from mtl_jax.data import movielens

# The published rows of MovieLens-100K's users 1-30 (tests/data/make_movielens_sample.py).
SAMPLE = pathlib.Path(__file__).parent / "data" / "ml-100k-sample"


def _write_grouplens(d, ratings):
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    (d / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"]) + "\n"
    )


def _write_recbole(d, ratings):
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)
    )
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"
    )
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tComedy\n2\tGoldenEye\t1995\tWestern\n"
    )


RATINGS = [(1, 1, 5, 100), (1, 2, 3, 90), (2, 1, 4, 50)]


@pytest.mark.parametrize("writer", [_write_grouplens, _write_recbole])
def test_both_layouts_parse_to_the_same_tables(tmp_path, writer):
    writer(tmp_path, RATINGS)
    data = movielens.load(movielens.fetch(tmp_path))
    np.testing.assert_array_equal(data.user, [1, 1, 2])
    np.testing.assert_array_equal(data.rating, [5, 3, 4])
    assert data.user_age == {1: 24, 2: 53} and data.user_occupation[1] == "technician"
    assert data.item_title == {1: "Toy Story", 2: "GoldenEye"} and data.item_year[1] == 1995
    assert movielens.GENRES[np.argmax(data.item_genres[1])] == "Comedy"
    assert movielens.GENRES[np.argmax(data.item_genres[2])] == "Western"


def test_malformed_row_names_file_and_line(tmp_path):
    _write_grouplens(tmp_path, RATINGS)
    with (tmp_path / "u.data").open("a") as f:
        f.write("3\t1\t4\n")
    with pytest.raises(movielens.DataFormatError, match=r"u.data:4: expected 4 fields"):
        movielens.load(tmp_path)
    _write_recbole(tmp_path, [(1, "x", 5, 1)])
    (tmp_path / "u.data").unlink()
    with pytest.raises(movielens.DataFormatError, match=r"ml-100k.inter:2: item id 'x'"):
        movielens.load(tmp_path)


def test_fetch_failure_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path / "cache"))

    def offline(target):
        raise OSError("network unreachable")

    monkeypatch.setattr(movielens, "_from_grouplens", offline)
    monkeypatch.setattr(movielens, "_from_recbole_wheel", offline)
    with pytest.raises(movielens.FetchError, match=r"(?s)cache.*empty.*GroupLens.*RecBole"):
        movielens.fetch()
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_fetch_keeps_the_copy_of_a_process_that_filled_the_cache_first(tmp_path, monkeypatch):
    """Two test workers (or two runs) fetching at once: the later one must not delete the
    files the other is already reading, and no staging directory is left behind."""
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path / "data"))
    cache = movielens.cache_dir()

    def write(target, text):
        target.mkdir(parents=True, exist_ok=True)
        for name in movielens.GROUPLENS_FILES:
            (target / name).write_text(text)

    def racing_download(target):
        write(cache, "winner")  # the other process publishes while this one downloads
        movielens.write_manifest(cache)
        write(target, "loser")

    monkeypatch.setattr(movielens, "_from_grouplens", racing_download)
    assert movielens.fetch() == cache
    assert (cache / "u.data").read_text() == "winner"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ml-100k"]
    assert movielens.fetch() == cache, "the next use re-verifies the copy and keeps it"


def test_a_damaged_cache_is_moved_aside_and_fetched_again(tmp_path, monkeypatch):
    """A cached copy whose files no longer match what was fetched (truncated by a full
    disk, edited) is never used: it is set aside and the data fetched again."""
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path / "data"))
    cache = movielens.cache_dir()
    fetched = []

    def download(target):
        fetched.append(target)
        _write_grouplens(target, RATINGS)

    monkeypatch.setattr(movielens, "_from_grouplens", download)
    assert movielens.fetch() == cache and len(fetched) == 1
    assert movielens.fetch() == cache and len(fetched) == 1, "an intact cache is reused"
    data = (cache / "u.data").read_bytes()
    (cache / "u.data").write_bytes(data[: len(data) // 2])  # cut short
    assert movielens.fetch() == cache and len(fetched) == 2
    assert (cache / "u.data").read_bytes() == data
    assert [p.name.startswith("ml-100k.damaged") for p in cache.parent.iterdir()].count(True) == 1


def test_a_cache_without_manifest_must_have_the_published_row_counts(tmp_path):
    _write_grouplens(tmp_path, RATINGS)
    assert "row counts" in movielens.cache_problem(tmp_path)
    _write_recbole(tmp_path, RATINGS)
    assert "sha256" in movielens.cache_problem(tmp_path)


def _reference_split(user, item, timestamp):
    """The rule written out plainly, one user at a time."""
    parts = {0: [], 1: [], 2: []}
    for u in sorted(set(user.tolist())):
        rows = [k for k in range(len(user)) if user[k] == u]
        rows.sort(key=lambda k: (timestamp[k], item[k]))
        n = len(rows)
        n_test, n_val = max(1, math.ceil(n / 10)), max(1, math.ceil(n / 10))
        parts[2] += rows[n - n_test :]
        parts[1] += rows[max(0, n - n_test - n_val) : n - n_test]
        parts[0] += rows[: max(0, n - n_test - n_val)]
    return tuple(np.array(sorted(parts[k]), dtype=np.int64) for k in range(3))


@pytest.mark.parametrize("seed", range(3))
def test_temporal_split_matches_plain_reference(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    user = rng.integers(1, 60, n)
    item = rng.permutation(n) + 1  # distinct items per row, shuffled
    timestamp = rng.integers(0, 50, n)  # many ties, broken by item id
    got = movielens.temporal_split(user, item, timestamp)
    for a, b in zip(got, _reference_split(user, item, timestamp), strict=True):
        np.testing.assert_array_equal(a, b)
    # Users with 1 or 2 ratings: the test part gets one, validation what is left.
    one = movielens.temporal_split(np.array([7]), np.array([1]), np.array([0]))
    assert [len(p) for p in one] == [0, 0, 1]


@pytest.mark.slow
def test_real_movielens_from_the_package_index(tmp_path, monkeypatch):
    """Fetches the RecBole wheel (PyPI), verifies sha256, and checks the published sizes."""
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path))
    monkeypatch.setattr(
        movielens, "_from_grouplens", lambda target: (_ for _ in ()).throw(OSError("skip"))
    )
    try:
        directory = movielens.fetch()
    except movielens.FetchError as e:
        pytest.skip(f"no network route to MovieLens-100K here: {e}")
    data = movielens.load(directory)
    assert len(data.rating) == 100_000
    assert len(set(data.user.tolist())) == 943 and len(set(data.item.tolist())) == 1682
    train, val, test = movielens.temporal_split(data.user, data.item, data.timestamp)
    assert len(train) + len(val) + len(test) == 100_000
    ref = _reference_split(data.user[:5000], data.item[:5000], data.timestamp[:5000])
    got = movielens.temporal_split(data.user[:5000], data.item[:5000], data.timestamp[:5000])
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_movielens_config_trains_smoke(tmp_path, monkeypatch):
    """configs/movielens.py:smoke end to end on the real data (skipped without a route to it)."""
    from configs import movielens as movielens_config
    from mtl_jax.train import train_and_evaluate

    try:
        movielens.fetch()
    except movielens.FetchError as e:
        pytest.skip(f"no network route to MovieLens-100K here: {e}")
    config = movielens_config.get_config("smoke")
    config.train.num_steps = 20
    # Ranking scores ~1.5M (user, movie) pairs: batches of 8192 keep per-batch overhead down.
    config.train.update(eval_every=10, checkpoint_every=10, eval_batch_size=8192)
    results = train_and_evaluate(config, str(tmp_path))
    # The rated task's validation positives join the train split (negatives.validation_positives).
    assert results["dataset_sizes"] == {
        "train": 79122 + 10439, "validation": 10439, "test": 10439,
    }  # fmt: skip
    assert results["test"]["rating"]["rmse"] < results["trivial"]["rating"]["rmse"]
    assert results["test"]["genre"]["macro_auc"] > 0.5
    ranking = results["ranking"]
    assert ranking["setup"]["users"] > 800 and ranking["setup"]["items"] == 1682
    plain, diverse = ranking["mmr_lambda=1"], ranking["mmr_lambda=0.5"]
    assert all(0.0 <= v <= 1.0 for v in plain.values())
    assert diverse["ild@10"] >= plain["ild@10"]  # MMR's genre penalty buys diversity


@pytest.mark.slow
@pytest.mark.parametrize(
    "trunk", ["shared_bottom", "single_task", "omoe", "cgc", "ple", "cross_stitch"]
)
def test_every_trunk_steps_on_movielens(trunk):
    """Each trunk on the real MovieLens tasks (regression, binary, 19-label multilabel), on
    the sample of the real files in tests/data (no network needed)."""
    from configs import movielens as movielens_config
    from mtl_jax import parallel
    from mtl_jax.data import load_dataset
    from mtl_jax.train import Trainer

    config = movielens_config.get_config("smoke")
    config.data.data_dir = str(SAMPLE)  # offline: real rows, 30 users
    config.model.trunk = trunk
    trainer = Trainer(config, load_dataset(config.data, config.seed), mesh=parallel.make_mesh(1))
    state, it = trainer.init_state(), trainer.train_iterator()
    for _ in range(3):
        state, metrics = trainer.train_step(state, parallel.to_global_batch(next(it), trainer.mesh))
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_movielens_pipeline_trains_offline_on_the_sample(tmp_path):
    """configs/movielens.py:smoke end to end on tests/data/ml-100k-sample (the published
    rows of 30 users): parsing, the temporal split, the multilabel genre task, training,
    validation, the catalogue ranking; no network."""
    from configs import movielens as movielens_config
    from mtl_jax.train import train_and_evaluate

    config = movielens_config.get_config("smoke")
    config.data.data_dir = str(SAMPLE)
    config.train.update(num_steps=30, eval_every=10, checkpoint_every=10, batch_size=128)
    results = train_and_evaluate(config, str(tmp_path))
    # The rated task's validation positives join the train split (negatives.validation_positives).
    assert results["dataset_sizes"] == {"train": 3125 + 408, "validation": 408, "test": 408}
    assert results["test"]["rating"]["rmse"] < results["trivial"]["rating"]["rmse"]
    assert 0.0 <= results["test"]["genre"]["macro_auc"] <= 1.0
    assert results["ranking"]["setup"]["users"] <= 30
    assert "gauc" in results["test_binary"]["like"]
    # The implicit task is scored on test positives plus K sampled negatives each, against
    # the trivial predictor of its training rate 1 / (1 + K).
    k = config.negatives.per_positive
    p = 1 / (1 + k)
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert results["trivial"]["rated"]["logloss"] == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= results["test"]["rated"]["auc"] <= 1.0


def test_text_templates():
    data = movielens.MovieLens(
        user=np.array([1]), item=np.array([1]), rating=np.array([5.0]), timestamp=np.array([0]),
        user_age={1: 24, 2: 18, 3: 80}, user_gender={1: "M", 2: "F", 3: "M"},
        user_occupation={1: "technician", 2: "none", 3: "other"}, user_zip={1: "1", 2: "2", 3: "3"},
        item_title={1: "Toy Story", 2: "Unknown"}, item_year={1: 1995, 2: 0},
        item_genres={1: np.eye(19)[[3, 4, 5]].sum(0), 2: np.eye(19)[0]},
    )  # fmt: skip
    assert movielens.item_text(data, 1) == "Toy Story (1995)"
    assert movielens.item_text(data, 1, with_genres=True) == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy"
    )
    assert movielens.item_text(data, 2, with_genres=True) == "Unknown"  # no year, no genre
    assert [movielens.user_text(data, u) for u in (1, 2, 3)] == [
        "A 24-year-old male technician",
        "An 18-year-old female person with no occupation",
        "An 80-year-old male person",
    ]


@pytest.mark.slow
def test_cold_start_split_holds_items_out_of_training():
    try:
        movielens.fetch()
    except movielens.FetchError as e:
        pytest.skip(f"no network route to MovieLens-100K here: {e}")
    plain = movielens.build_dataset()
    cold = movielens.build_dataset(seed=3, cold_item_fraction=0.1)
    ids = lambda split, rows: np.unique(split.features["item_id"][rows])
    test_cold = ids(cold.test, cold.test_subsets["cold_items"])
    val_cold = ids(cold.validation, cold.validation_subsets["cold_items"])
    assert len(test_cold) == len(val_cold) == round(0.1 * 1682)  # 10% of the movies each
    assert not np.isin(test_cold, val_cold).any()
    # Test-cold movies appear only in test, validation-cold ones only in validation.
    assert not np.isin(cold.train.features["item_id"], np.r_[test_cold, val_cold]).any()
    assert not np.isin(cold.validation.features["item_id"], test_cold).any()
    assert not np.isin(cold.test.features["item_id"], val_cold).any()
    # Every rating moved, none lost; subsets partition their split.
    everything = {s: plain.split(s).features["item_id"] for s in ("train", "validation", "test")}
    total = sum(len(v) for v in everything.values())
    assert sum(cold.sizes().values()) == total
    for held, subsets in ((test_cold, cold.test_subsets), (val_cold, cold.validation_subsets)):
        n = sum(np.isin(v, held).sum() for v in everything.values())
        assert len(subsets["cold_items"]) == n
    for split, subsets in (
        (cold.test, cold.test_subsets),
        (cold.validation, cold.validation_subsets),
    ):
        rows = np.sort(np.concatenate(list(subsets.values())))
        np.testing.assert_array_equal(rows, np.arange(len(split)))
    other = movielens.build_dataset(seed=4, cold_item_fraction=0.1)
    assert not np.array_equal(ids(other.test, other.test_subsets["cold_items"]), test_cold)


# Bad rows: each names the file, the line and what is wrong (GroupLens layout unless noted).
GOOD_USERS = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def _item_line(iid, flags=None):
    flags = flags or ["0"] * 19
    return f"{iid}|Movie {iid} (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"


GOOD_ITEMS = _item_line(1) + _item_line(2)


@pytest.mark.parametrize(
    "ratings, users, items, expected",
    [
        ("1\t1\tnan\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: rating 'nan' is not a finite"),
        ("1\t1\tinf\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: rating 'inf' is not a finite"),
        ("1\t1\t4\t5\n1\t2\t1e9\t6\n", GOOD_USERS, GOOD_ITEMS, r"u.data:2: rating '1e9' outside"),
        ("1\t1\t0\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: rating '0' outside 1-5"),
        ("1\t1\t4\t5\n1\t-5\t3\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:2: item id '-5' must be"),
        ("1\t99999\t4\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: item id 99999 has no row in"),
        ("7\t1\t4\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: user id 7 has no row in u.user"),
        ("0\t1\t4\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: user id '0' must be >= 1"),
        ("1.5\t1\t4\t5\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: user id '1.5' is not a whole"),
        ("1\t1\t4\tyesterday\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: timestamp 'yesterday'"),
        ("1\t1\t4\t-3\n", GOOD_USERS, GOOD_ITEMS, r"u.data:1: timestamp '-3' must be >= 0"),
        ("", GOOD_USERS, GOOD_ITEMS, r"u.data:1: no ratings"),
        ("1\t1\t4\t5\n", GOOD_USERS + "1|30|M|x|1\n", GOOD_ITEMS, r"u.user:3: user id 1 is li"),
        ("1\t1\t4\t5\n", "1|0|M|x|1\n", GOOD_ITEMS, r"u.user:1: age '0' outside 1-120"),
        ("1\t1\t4\t5\n", "1|abc|M|x|1\n", GOOD_ITEMS, r"u.user:1: age 'abc' is not a number"),
        ("1\t1\t4\t5\n", "1|30|Q|x|1\n", GOOD_ITEMS, r"u.user:1: gender 'Q'; valid: M, F"),
        ("1\t1\t4\t5\n", GOOD_USERS, GOOD_ITEMS + _item_line(2), r"u.item:3: item id 2 is list"),
        ("1\t1\t4\t5\n", GOOD_USERS, _item_line(1, ["2"] * 19), r"u.item:1: genre flags must"),
        ("1\t1\t4\t5\n", GOOD_USERS, "1|short\n", r"u.item:1: expected 24 fields"),
    ],
)
def test_bad_movielens_rows_name_file_line_and_problem(tmp_path, ratings, users, items, expected):
    (tmp_path / "u.data").write_text(ratings)
    (tmp_path / "u.user").write_text(users)
    (tmp_path / "u.item").write_text(items)
    with pytest.raises(movielens.DataFormatError, match=expected):
        movielens.load(tmp_path)


def test_recbole_layout_rows_are_checked_too(tmp_path):
    _write_recbole(tmp_path, [(1, 1, 5, 100), (3, 1, 4, 50)])
    with pytest.raises(movielens.DataFormatError, match=r"ml-100k.inter:3: user id 3 has no row"):
        movielens.load(tmp_path)


def test_a_data_dir_given_but_missing_or_incomplete_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(movielens.FetchError, match=r"data_dir .*nothing: no such directory"):
        movielens.fetch(tmp_path / "nothing")
    (tmp_path / "u.data").write_text("1\t1\t4\t5\n")
    with pytest.raises(movielens.FetchError, match=r"incomplete.*found \['u.data'\]"):
        movielens.fetch(tmp_path)


def test_a_file_that_is_not_text_names_file_and_line(tmp_path):
    _write_recbole(tmp_path, RATINGS)
    with (tmp_path / "ml-100k.user").open("ab") as f:
        f.write(b"3\t30\tM\t\xff\xfe\t1\n")
    with pytest.raises(movielens.DataFormatError, match=r"ml-100k.user:4: not utf-8 text"):
        movielens.load(tmp_path)


def test_every_movielens_variant_fits_the_dataset():
    """Each declared variant of configs/movielens.py passes the checks against the data
    (task names, fusion weights, negatives), not only the config-only checks."""
    from configs import movielens as movielens_config
    from mtl_jax import configlib
    from mtl_jax.data import load_dataset

    for variant in movielens_config.VARIANTS:
        config = movielens_config.get_config(variant or None)
        config.data.data_dir = str(SAMPLE)
        configlib.validate(config)
        configlib.validate_against_dataset(config, load_dataset(config.data, config.seed))
