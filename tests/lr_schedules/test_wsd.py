import math

import jax
import numpy as np
import pytest

import schedules


def _wsd_reference(t, peak, total, warmup, decay, shape, end, init):
    """The formulas of Hu et al. 2024 (WSD) and Hägele et al. 2024 (cooldowns), in float64 Python."""
    if t < warmup:
        return init + (peak - init) * t / warmup
    start = total - decay
    if t < start:
        return peak
    if t > total:
        return end
    f = (t - start) / decay
    if shape == "linear":
        return peak + (end - peak) * f
    if shape == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * f))
    return end + (peak - end) * (1 - math.sqrt(f))


CASES = [
    dict(peak=3e-3, total=100, warmup=10, decay=20, shape="1-sqrt", end=0.0, init=0.0),
    dict(peak=1.0, total=57, warmup=0, decay=13, shape="linear", end=0.1, init=0.0),
    dict(peak=0.5, total=40, warmup=7, decay=33, shape="cosine", end=1e-3, init=0.05),  # no stable stretch
    dict(peak=2.0, total=30, warmup=5, decay=9, shape="1-sqrt", end=0.2, init=0.5),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c["shape"])
def test_matches_the_formulas(c):
    s = schedules.wsd(c["peak"], c["total"], c["warmup"], c["decay"], c["shape"], c["end"], c["init"])
    steps = np.arange(c["total"] + 5)
    got = np.asarray(jax.jit(jax.vmap(s))(steps), np.float64)
    want = np.array([_wsd_reference(int(t), **c) for t in steps])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * c["peak"])  # float32: a few roundings


def test_in_float64_exactly():
    c = CASES[0]
    with jax.enable_x64(True):
        s = schedules.wsd(c["peak"], c["total"], c["warmup"], c["decay"], c["shape"], c["end"], c["init"])
        got = np.asarray(jax.vmap(s)(np.arange(c["total"] + 3)))
    want = np.array([_wsd_reference(t, **c) for t in range(c["total"] + 3)])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_continuous_at_the_phase_boundaries(shape):
    peak, total, warmup, decay, end = 1.0, 1000, 100, 200, 0.01
    with jax.enable_x64(True):
        s = schedules.wsd(peak, total, warmup, decay, shape, end)
        for boundary, value in [(warmup, peak), (total - decay, peak), (total, end)]:
            for t in (boundary - 1e-6, boundary, boundary + 1e-6):
                assert abs(float(s(t)) - value) < 2e-3  # sqrt's slope: sqrt(1e-6 / 200) ~ 7e-5 of the drop


def test_a_fraction_of_the_total():
    a, b = schedules.wsd(1.0, 50, 5, 0.2), schedules.wsd(1.0, 50, 5, 10)
    np.testing.assert_array_equal(jax.vmap(a)(np.arange(55)), jax.vmap(b)(np.arange(55)))


def test_the_three_shapes_differ_in_the_cooldown():
    values = {shape: float(schedules.wsd(1.0, 100, 0, 50, shape)(75)) for shape in ("1-sqrt", "linear", "cosine")}
    np.testing.assert_allclose([values["1-sqrt"], values["linear"], values["cosine"]],
                               [1 - math.sqrt(0.5), 0.5, 0.5], rtol=1e-6)
    assert float(schedules.wsd(1.0, 100, 0, 50, "cosine")(60)) > float(schedules.wsd(1.0, 100, 0, 50, "linear")(60))


@pytest.mark.parametrize("kwargs,name", [
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(decay_steps=-3), "decay_steps"),
    (dict(decay_steps=1.5), "decay_steps"),
    (dict(decay_shape="exponential"), "decay_shape"),
    (dict(warmup_steps=60, decay_steps=50), "warmup_steps \\+ decay_steps"),
])
def test_bad_arguments_raise(kwargs, name):
    args = dict(peak_value=1.0, total_steps=100) | kwargs
    with pytest.raises(ValueError, match=name):
        schedules.wsd(**args)
