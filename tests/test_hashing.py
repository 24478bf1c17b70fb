"""Hashed ids (mtl_jax/data/hashing.py): stable fingerprints, out-of-vocabulary row 0."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mtl_jax.data.hashing import HashedIds, fingerprints


def test_fingerprints_are_stable_across_processes_and_string_widths():
    """Another interpreter (other hash seed) gives the same values, and a string's value does
    not depend on the longest string next to it."""
    code = (
        "import numpy as np; from mtl_jax.data.hashing import fingerprints;"
        "print(*fingerprints(['item_7', 'x', '']),"
        " *fingerprints(np.array([12, 2**63 + 5], np.uint64)))"
    )
    env_runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.split()
        for seed in ("1", "2")
    ]  # fmt: skip
    here = [*fingerprints(["item_7", "x", ""]), *fingerprints(np.array([12, 2**63 + 5], np.uint64))]
    assert env_runs[0] == env_runs[1] == [str(v) for v in here]
    wide = fingerprints(np.array(["x", "a much longer neighbour"]))
    assert wide[0] == here[1]
    assert len(set(fingerprints([f"u{i}" for i in range(10_000)]))) == 10_000


def test_unseen_and_rare_ids_share_the_out_of_vocabulary_row():
    train = ["a", "b", "b", "c", "c", "c"]
    enc = HashedIds.fit(train, buckets=1000, min_count=2)
    rows = enc.encode(["a", "b", "c", "never seen", "b"])
    assert rows[0] == 0  # seen once, below min_count
    assert rows[3] == 0  # unseen: never another id's row
    assert rows[1] == rows[4] and 1 <= rows[1] <= 1000 and 1 <= rows[2] <= 1000
    assert rows[1] != rows[2]
    assert enc.rows == 1001


def test_large_integer_ids_hash_into_the_table():
    ids = np.array([2**40 + 1, 2**40 + 1, 7, 2**62], np.int64)
    enc = HashedIds.fit(ids, buckets=16)
    rows = enc.encode(np.array([7, 2**62, 2**40 + 1, 8], np.int64))
    assert rows.dtype == np.int32 and rows[3] == 0 and np.all((rows[:3] >= 1) & (rows[:3] <= 16))


def test_collisions_count_ids_that_share_a_bucket():
    ids = [f"id{i}" for i in range(200)]
    enc = HashedIds.fit(ids, buckets=50)
    rows = enc.encode(ids)
    assert enc.collisions() == len(ids) - len(np.unique(rows))  # brute force
    assert enc.collisions() > 0


def test_encoder_round_trips_through_a_file(tmp_path):
    enc = HashedIds.fit(["x", "y", "z"], buckets=7, name="item")
    enc.save(tmp_path / "item.npz")
    back = HashedIds.load(tmp_path / "item.npz")
    assert (back.buckets, back.name) == (7, "item")
    np.testing.assert_array_equal(back.encode(["z", "q"]), enc.encode(["z", "q"]))


@pytest.mark.parametrize(
    "ids, buckets, match",
    [
        ([1, 2], 0, "item: hash_buckets must be >= 1, got 0"),
        ([3, -4], 8, "item: negative id -4 at row 1"),
        ([0.5, 1.0], 8, "item: ids must be integers or strings, got dtype float64"),
    ],
)
def test_bad_hashing_inputs_are_named(ids, buckets, match):
    with pytest.raises(ValueError, match=match):
        HashedIds.fit(ids, buckets, name="item")
