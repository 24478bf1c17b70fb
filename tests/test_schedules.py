"""Learning-rate schedules (``optim.schedule``) against their closed forms, and their
config errors."""

import math

import ml_collections
import numpy as np
import optax
import pytest

from mtl_jax import configlib
from mtl_jax.configlib import ConfigError
from mtl_jax.optim import SCHEDULES, make_optimizer, schedule
from tests.helpers import tiny_config

PEAK, WARMUP, TOTAL = 0.5, 10, 110  # 100 steps after warmup


def _optim(**overrides) -> ml_collections.ConfigDict:
    c = tiny_config().optim
    c.update(overrides)
    return c


def _expected(name: str, step: int, c) -> float:
    """Each schedule written out by hand, step by step."""
    if step < WARMUP:
        return PEAK * step / WARMUP
    s = step - WARMUP  # steps after warmup
    d = TOTAL - WARMUP
    if name == "warmup_cosine":
        end = PEAK * c.end_fraction
        return end + (PEAK - end) * 0.5 * (1 + math.cos(math.pi * min(s, d) / d))
    if name == "linear":
        return PEAK + (PEAK * c.end_fraction - PEAK) * min(s, d) / d
    if name == "constant":
        return PEAK
    if name == "exponential":
        return PEAK * c.decay_rate ** (s / (c.decay_steps or d))
    if name == "step":
        return PEAK * c.step_factor ** sum(s >= round(f * d) for f in c.step_boundaries)
    if name == "rsqrt":
        return PEAK * math.sqrt(WARMUP / (WARMUP + s))
    raise AssertionError(name)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_follows_its_closed_form(name):
    c = _optim(schedule=name, end_fraction=0.05, decay_rate=0.2, decay_steps=0,
               step_boundaries=(0.3, 0.6), step_factor=0.5)  # fmt: skip
    fn = schedule(PEAK, WARMUP, TOTAL, c)
    for step in (0, 1, 5, 9, 10, 11, 30, 39, 40, 41, 70, 71, 109, 110, 150):
        got = float(fn(step))
        assert got == pytest.approx(_expected(name, step, c), rel=1e-5, abs=1e-8), (name, step)


def test_exponential_with_its_own_period():
    c = _optim(schedule="exponential", decay_rate=0.5, decay_steps=20)
    fn = schedule(PEAK, WARMUP, TOTAL, c)
    assert float(fn(WARMUP + 20)) == pytest.approx(PEAK / 2, rel=1e-6)
    assert float(fn(WARMUP + 50)) == pytest.approx(PEAK / 2**2.5, rel=1e-6)


def test_default_is_the_previous_warmup_cosine():
    fn = schedule(PEAK, WARMUP, TOTAL, _optim())
    ref = optax.warmup_cosine_decay_schedule(0.0, PEAK, WARMUP, TOTAL, PEAK * 0.01)
    steps = np.arange(0, TOTAL + 5)
    np.testing.assert_allclose([fn(s) for s in steps], [ref(s) for s in steps], rtol=1e-6)


def test_no_warmup_starts_at_the_peak():
    for name in SCHEDULES:
        assert float(schedule(PEAK, 0, TOTAL, _optim(schedule=name))(0)) == pytest.approx(PEAK)


def test_the_optimizer_reads_the_schedule():
    """make_optimizer hands the optim section to every group's schedule (an unknown name
    reaches it; validate() would name it first in a run)."""
    with pytest.raises(ValueError, match="unknown optim.schedule 'nope'"):
        make_optimizer(_optim(schedule="nope"), total_steps=TOTAL)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("schedule", "cosine", "config.optim.schedule: 'cosine'; valid: ('warmup_cosine', "),
        ("end_fraction", 1.5, "config.optim.end_fraction: must lie in [0, 1], got 1.5"),
        ("decay_rate", 0.0, "config.optim.decay_rate: must lie in (0, 1], got 0.0"),
        ("step_factor", 2.0, "config.optim.step_factor: must lie in (0, 1], got 2.0"),
        ("decay_steps", -1, "config.optim.decay_steps: must be >= 0, got -1"),
        ("step_boundaries", (0.75, 0.5), "config.optim.step_boundaries: must be increasing"),
        ("step_boundaries", (0.5, 1.0), "fractions in (0, 1) of the steps after warmup"),
    ],
)
def test_bad_schedule_config_is_named(key, value, expected):
    config = tiny_config()
    config.optim[key] = value
    with pytest.raises(ConfigError) as err:
        configlib.validate(config)
    assert expected in str(err.value), str(err.value)
