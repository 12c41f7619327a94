"""Schedules: learning-rate warm-up/cosine, EMA tau cosine, linear lr scaling at their key steps."""

import math

import pytest

from relic_fast.schedules import ema_tau, learning_rate, scaled_lr


def test_learning_rate_warmup_then_cosine_to_zero():
    kwargs = dict(total_steps=100, warmup_steps=10, peak_lr=2.0)
    assert learning_rate(0, **kwargs) == 0.0
    assert learning_rate(5, **kwargs) == pytest.approx(1.0)            # half-way up the ramp
    assert learning_rate(10, **kwargs) == pytest.approx(2.0)           # end of warm-up: the peak
    assert learning_rate(55, **kwargs) == pytest.approx(1.0)           # half-way down the cosine
    assert learning_rate(100, **kwargs) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(120, **kwargs) == pytest.approx(0.0, abs=1e-12)  # clamped after the end
    # A quarter into the decay: peak * (1 + cos(pi/4)) / 2.
    assert (learning_rate(20, total_steps=50, warmup_steps=10, peak_lr=2.0)
            == pytest.approx(2.0 * (1 + math.cos(math.pi / 4)) / 2))


def test_learning_rate_without_warmup_starts_at_peak():
    assert learning_rate(0, total_steps=10, warmup_steps=0, peak_lr=0.3) == pytest.approx(0.3)


def test_learning_rate_without_warmup_is_the_linear_probes_cosine():
    """The linear evaluation and the supervised baseline use this schedule (no warm-up) too."""
    kwargs = dict(total_steps=100, warmup_steps=0, peak_lr=0.6)
    assert learning_rate(0, **kwargs) == pytest.approx(0.6)
    assert learning_rate(50, **kwargs) == pytest.approx(0.3)
    assert learning_rate(100, **kwargs) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(130, **kwargs) == pytest.approx(0.0, abs=1e-12)  # a loader with a step to spare


def test_ema_tau_rises_from_base_to_one():
    assert ema_tau(0, total_steps=1000, tau_base=0.996) == pytest.approx(0.996)
    assert ema_tau(500, total_steps=1000, tau_base=0.996) == pytest.approx(0.998)
    assert ema_tau(1000, total_steps=1000, tau_base=0.996) == pytest.approx(1.0)
    assert ema_tau(2000, total_steps=1000, tau_base=0.996) == pytest.approx(1.0)
    values = [ema_tau(k, total_steps=50, tau_base=0.99) for k in range(51)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_scaled_lr_is_linear_in_batch():
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2)
    assert scaled_lr(0.3, 256) == pytest.approx(0.3)
