"""Checkpoint integrity: fingerprints catch flipped bytes, damage is set aside and the one
before it used (iterator included), a code change is an error naming paths, not damage."""

import logging
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import integrity, parallel
from mtl_jax.checkpoint import (
    Checkpointer,
    IncompatibleCheckpointError,
    NoIntactCheckpointError,
)

CONFIG = {"model": {"width": 4}}


def _state(seed=0, rows=64):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "w": jnp.asarray(rng.normal(size=(rows, 16)).astype(np.float32)),
            "b": jnp.asarray(rng.normal(size=(16,)).astype(np.float32)),
        },
        "step": jnp.asarray(seed, jnp.int32),
    }


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _iterator(position=0):
    it = iter(grain.MapDataset.range(1000).to_iter_dataset())
    for _ in range(position):
        next(it)
    return it


def _fresh_iterator(_step=None):
    return _iterator()


def _save_steps(workdir, steps=(1, 2, 3)):
    """Checkpoint ``s`` holds ``_state(s)`` and an iterator advanced ``10 * s`` times."""
    ckpt = Checkpointer(workdir, max_to_keep=5, async_save=False)
    for s in steps:
        ckpt.save(s, _state(s), _iterator(10 * s), {"config": CONFIG, "step": s})
    ckpt.wait()
    ckpt.close()


def _array_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files holding array bytes (the largest in Orbax's OCDBT layout)."""
    files = [
        p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt.process" in str(p)
    ]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _flip(path: pathlib.Path, offset_fraction=0.5, bit=0x10):
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= bit
    path.write_bytes(bytes(data))


def _restore_newest(workdir):
    ckpt = Checkpointer(workdir, max_to_keep=5, async_save=False)
    try:
        return ckpt.restore_newest(lambda s: _abstract(_state(s)), _fresh_iterator, CONFIG)
    finally:
        ckpt.close()


# -- fingerprints ----------------------------------------------------------------------


def test_every_single_bit_flip_changes_the_fingerprint():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    base = integrity.fingerprint({"x": x})["x"]
    bits = x.view(np.uint32)
    for index in range(x.size):
        for bit in (0, 7, 22, 23, 31):
            flipped = bits.copy().reshape(-1)
            flipped[index] ^= np.uint32(1 << bit)
            changed = integrity.fingerprint({"x": flipped.view(np.float32).reshape(x.shape)})["x"]
            assert changed != base, (index, bit)


def test_fingerprint_reference_and_position_sensitivity():
    x = np.array([1.5, -2.0, 3.25], np.float32)
    expected = int(sum(int(b) * (2 * i + 1) for i, b in enumerate(x.view(np.uint32))) % 2**32)
    assert integrity.fingerprint({"x": x})["x"] == expected
    assert integrity.fingerprint({"x": x[::-1].copy()})["x"] != expected  # a swap is seen
    flags = np.array([True, False, True])
    assert integrity.fingerprint({"f": flags})["f"] == 1 * 1 + 0 * 3 + 1 * 5


def test_fingerprint_of_a_sharded_array_equals_the_whole_one():
    x = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    mesh = parallel.make_mesh(8)
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("data")))
    assert integrity.fingerprint({"x": sharded}) == integrity.fingerprint({"x": x})


def test_structure_differences_name_paths_shapes_and_dtypes():
    saved = {"a": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.int32), "c": np.zeros(1)}
    now = {"a": np.zeros((4, 2), np.float32), "b": np.zeros(2, np.float32), "d": np.zeros(1)}
    assert integrity.structure_differences(saved, now) == [
        "c: only in the checkpoint",
        "d: not in the checkpoint",
        "a: checkpoint (3, 2) float32, this code (4, 2) float32",
        "b: checkpoint (2,) int32, this code (2,) float32",
    ]
    assert integrity.structure_differences(saved, saved) == []


# -- latest checkpoints ----------------------------------------------------------------


def test_intact_checkpoints_restore_the_newest_with_its_iterator(tmp_path):
    _save_steps(tmp_path)
    step, state, meta, it = _restore_newest(tmp_path)
    assert (step, meta["step"]) == (3, 3)
    jax.tree.map(np.testing.assert_array_equal, state, _state(3))
    assert next(it) == 30


@pytest.mark.parametrize(
    "damage",
    ["flip_array_bytes", "truncate_array_file", "delete_array_file", "flip_meta", "empty_dir"],
)
def test_damaged_latest_is_set_aside_and_the_one_before_restores_with_its_iterator(
    tmp_path, damage, caplog
):
    _save_steps(tmp_path)
    step_dir = tmp_path / "checkpoints" / "3"
    if damage == "flip_array_bytes":
        _flip(_array_files(step_dir)[0])
    elif damage == "truncate_array_file":
        path = _array_files(step_dir)[0]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "delete_array_file":
        _array_files(step_dir)[0].unlink()
    elif damage == "flip_meta":
        meta = step_dir / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"step": 3', '"step": 3,,'))
    else:
        for p in sorted(step_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    with caplog.at_level(logging.WARNING, logger="mtl_jax"):
        step, state, meta, it = _restore_newest(tmp_path)
    assert step == 2 and meta["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, state, _state(2))
    assert next(it) == 20, "the iterator is the restored checkpoint's, not the damaged one's"
    assert (tmp_path / "checkpoints" / "3.damaged").is_dir()
    assert not step_dir.exists()
    assert "checkpoint at step 3 is damaged" in caplog.text
    # The older checkpoints are untouched.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]


def test_every_checkpoint_damaged_restores_none_and_keeps_them_all(tmp_path):
    _save_steps(tmp_path, steps=(1, 2))
    for s in (1, 2):
        _flip(_array_files(tmp_path / "checkpoints" / str(s))[0])
    assert _restore_newest(tmp_path) is None
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["1.damaged", "2.damaged"]


def test_a_structure_change_is_an_error_naming_paths_and_nothing_is_set_aside(tmp_path):
    _save_steps(tmp_path, steps=(1, 2))
    ckpt = Checkpointer(tmp_path, max_to_keep=5, async_save=False)
    changed = _state(2, rows=80)
    changed["params"]["extra"] = jnp.zeros(3)
    with pytest.raises(IncompatibleCheckpointError) as err:
        ckpt.restore_newest(_abstract(changed), _fresh_iterator, CONFIG)
    ckpt.close()
    message = str(err.value)
    assert "params/w: checkpoint (64, 16) float32, this code (80, 16) float32" in message
    assert "params/extra: not in the checkpoint" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_a_config_change_is_refused_before_any_restore(tmp_path):
    _save_steps(tmp_path, steps=(1,))
    ckpt = Checkpointer(tmp_path, max_to_keep=5, async_save=False)
    with pytest.raises(IncompatibleCheckpointError, match=r"model.width: checkpoint=4 now=8"):
        ckpt.restore_newest(_abstract(_state(1)), _fresh_iterator, {"model": {"width": 8}})
    ckpt.close()
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_a_transient_read_error_is_retried_not_called_damage(tmp_path, monkeypatch):
    _save_steps(tmp_path, steps=(1, 2))
    original = Checkpointer.restore
    failures = []

    def flaky(self, step, target, iterator):
        if not failures:
            failures.append(step)
            raise OSError(5, "Input/output error")
        return original(self, step, target, iterator)

    monkeypatch.setattr(Checkpointer, "restore", flaky)
    step, _, _, it = _restore_newest(tmp_path)
    assert (step, failures) == (2, [2])
    assert next(it) == 20
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_a_checkpoint_deleted_by_another_process_while_read_is_skipped(tmp_path, monkeypatch):
    _save_steps(tmp_path, steps=(1, 2))
    original = Checkpointer.restore

    def vanishing(self, step, target, iterator):
        if step == 2:
            import shutil

            shutil.rmtree(tmp_path / "checkpoints" / "2")
            raise FileNotFoundError("gone")
        return original(self, step, target, iterator)

    monkeypatch.setattr(Checkpointer, "restore", vanishing)
    step, _, _, _ = _restore_newest(tmp_path)
    assert step == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


# -- best checkpoints ------------------------------------------------------------------


def _save_best(workdir, steps):
    ckpt = Checkpointer(workdir, async_save=False)
    for s in steps:
        ckpt.save_best(s, _state(s)["params"])
    ckpt.wait()
    return ckpt


def test_best_keeps_the_previous_step_and_overwrites_a_stale_copy_of_the_same(tmp_path):
    ckpt = _save_best(tmp_path, (1, 2, 3))
    assert ckpt.best_steps() == [2, 3], "the previous best stays until the next is complete"
    ckpt.save_best(3, _state(7)["params"])  # the same step again, other values: replaced
    ckpt.wait()
    params = ckpt.restore_best(_abstract(_state(7)["params"]), step=3)
    jax.tree.map(np.testing.assert_array_equal, params, _state(7)["params"])
    ckpt.discard_best_after(2)
    assert ckpt.best_steps() == [2]
    ckpt.close()


def test_a_damaged_best_falls_back_to_the_previous_best(tmp_path, caplog):
    _save_best(tmp_path, (1, 2)).close()
    best_dir = tmp_path / "best" / "2"
    files = [
        p for p in (best_dir / "params").rglob("*") if p.is_file() and "ocdbt.process" in str(p)
    ]
    _flip(max(files, key=lambda p: p.stat().st_size))
    ckpt = Checkpointer(tmp_path, async_save=False)
    with caplog.at_level(logging.WARNING, logger="mtl_jax"):
        step, params = ckpt.restore_best_with_step(_abstract(_state(1)["params"]), step=2)
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, params, _state(1)["params"])
    assert (tmp_path / "best" / "2.damaged").is_dir()
    assert "instead of the damaged one of step 2" in caplog.text
    files = [p for p in (tmp_path / "best" / "1").rglob("*") if "ocdbt.process" in str(p)]
    _flip(max((p for p in files if p.is_file()), key=lambda p: p.stat().st_size))
    ckpt.close()
    ckpt = Checkpointer(tmp_path, async_save=False)
    with pytest.raises(NoIntactCheckpointError, match="no intact best checkpoint up to step 1"):
        ckpt.restore_best(_abstract(_state(1)["params"]))
    ckpt.close()


def test_keys_added_since_a_checkpoint_resume_at_their_former_behaviour():
    """A checkpoint written before a key existed resumes when the key holds the value that
    behaves as the old code did (or a method kwarg is left to its default); any other value
    is a change and is named."""
    from mtl_jax.checkpoint import config_differences

    saved = {"optim": {"learning_rate": 0.1}, "balancing": {"method": "pcgrad"}}
    now = {
        "optim": {"learning_rate": 0.1, "schedule": "warmup_cosine", "step_factor": 0.1},
        "balancing": {"method": "pcgrad", "gramian_at": "trunk", "mu": None},
    }
    assert config_differences(saved, now) == {}
    now["optim"]["schedule"] = "linear"
    now["balancing"]["mu"] = 0.5
    assert config_differences(saved, now) == {
        "balancing.mu": ("<absent>", 0.5),
        "optim.schedule": ("<absent>", "linear"),
    }
