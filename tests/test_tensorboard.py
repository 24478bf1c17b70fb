"""TensorBoard event files: a run's metrics.jsonl, scalar for scalar, readable without
TensorFlow; learning rates logged from the schedule."""

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from mtl_jax.optim import schedule
from mtl_jax.tensorboard import scalars
from mtl_jax.train import train_and_evaluate
from tests.helpers import tiny_config


def read_events(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TFRecord-framed Event protos of ``logdir``."""
    out: dict[str, dict[int, float]] = {}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_scalars_flatten_train_and_validation_records():
    record = {"step": 5, "split": "train", "loss": 0.5, "click/loss": 0.25, "note": "x",
              "finished": True}  # fmt: skip
    assert scalars(record) == {"train/loss": 0.5, "train/click/loss": 0.25}
    assert scalars(
        {"step": 10, "split": "validation", "metrics": {"click": {"auc": 0.7, "loss": 0.3}}}
    ) == {"validation/click/auc": 0.7, "validation/click/loss": 0.3}


def test_a_run_writes_its_metrics_as_tensorboard_scalars(tmp_path):
    config = tiny_config(num_steps=10, eval_every=5, checkpoint_every=5, log_every=5)
    config.balancing.method = "pcgrad"  # weights and gradient cosines in the records
    train_and_evaluate(config, str(tmp_path))
    events = read_events(tmp_path / "tensorboard")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        tags = scalars(record)
        assert tags, record
        for tag, value in tags.items():
            assert events[tag][record["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), tag
    assert {"train/loss", "train/click/loss", "train/examples_per_s",
            "validation/click/auc", "train/lr/trunk"} <= set(events)  # fmt: skip
    assert any(tag.startswith("train/") and "cos" in tag for tag in events)
    peak, c = config.optim.learning_rate, config.optim
    for step in (5, 10):  # the rate of the update that made the step
        expected = float(schedule(peak, c.warmup_steps, 10, c)(step - 1))
        assert events["train/lr/trunk"][step] == pytest.approx(expected, rel=1e-6)


def test_tensorboard_off_writes_no_events(tmp_path):
    config = tiny_config(num_steps=5, eval_every=5, checkpoint_every=5, log_every=5)
    config.train.tensorboard = False
    train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "metrics.jsonl").exists()
