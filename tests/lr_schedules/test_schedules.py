"""Schedules: references without a PyTorch counterpart, jit without recompiling, bad arguments."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
import schedules

NAN = float("nan")


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_lr_range_ramp(mode):
    got = np.asarray(jax.vmap(schedules.lr_range(1e-7, 10.0, 100, mode))(jnp.arange(120)), np.float64)
    t = np.minimum(np.arange(120), 99) / 99
    want = 1e-7 * (10.0 / 1e-7) ** t if mode == "exponential" else 1e-7 + (10.0 - 1e-7) * t
    # float32's exp of an argument up to log(1e8) = 18.4 resolves ~18.4 * 6e-8 = 1.1e-6.
    np.testing.assert_allclose(got, want, rtol=3e-6)


def test_training_loop_does_not_recompile():
    tx = optimizers.sgd(schedules.warmup(schedules.cosine(0.1, 50), 10), momentum=schedules.cyclical(0.95, 0.85, 5))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(jax.tree.map(jnp.sin, params), state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(60):
        params, state = step(params, state)
    assert len(traces) == 1


def test_sgd_follows_one_cycle_learning_rate_and_momentum():
    total = 40
    lr = schedules.one_cycle(total, 0.5, pct_start=0.3)
    mom = schedules.one_cycle(total, 0.85, pct_start=0.3, initial_value=0.95, final_value=0.95)
    tx = optimizers.sgd(learning_rate=lr, momentum=mom)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}
    state = tx.init(params)
    theta, buf = np.asarray(params["w"], np.float64), np.zeros(4)
    for t in range(total):
        g = rng.normal(size=4)
        u, state = jax.jit(tx.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, u)
        hp = optimizers.get_hyperparams(state)
        np.testing.assert_allclose([hp["learning_rate"], hp["momentum"]], [lr(t), mom(t)], rtol=1e-6)
        buf = float(mom(t)) * buf + g  # the heavy-ball update with this step's values
        theta = theta - float(lr(t)) * buf
        np.testing.assert_allclose(params["w"], theta, rtol=1e-5, atol=1e-6)
    assert float(mom(0)) == pytest.approx(0.95) and float(mom(11)) == pytest.approx(0.85, abs=1e-3)


BAD = [
    (schedules.factor, dict(init_value=1.0, factor=0.0), "factor"),
    (schedules.factor, dict(init_value=1.0, factor=1.5), "factor"),
    (schedules.factor, dict(init_value=1.0, factor=0.9, min_value=-1.0), "min_value"),
    (schedules.multi_factor, dict(init_value=1.0, factor=0.5), "milestones"),
    (schedules.multi_factor, dict(init_value=1.0, factor=0.5, milestones=[5, 3]), "milestones"),
    (schedules.multi_factor, dict(init_value=1.0, factor=0.5, step_size=0), "step_size"),
    (schedules.multi_factor, dict(init_value=1.0, factor=NAN, step_size=2), "factor"),
    (schedules.polynomial, dict(init_value=1.0, end_value=0.0, power=1.0, decay_steps=0), "decay_steps"),
    (schedules.polynomial, dict(init_value=1.0, end_value=0.0, power=-1.0, decay_steps=5), "power"),
    (schedules.cosine, dict(init_value=1.0, decay_steps=0), "decay_steps"),
    (schedules.cosine, dict(init_value=1.0, decay_steps=-5), "decay_steps"),
    (schedules.sgdr, dict(init_value=1.0, first_cycle_steps=0), "first_cycle_steps"),
    (schedules.sgdr, dict(init_value=1.0, first_cycle_steps=10, cycle_mult=0), "cycle_mult"),
    (schedules.sgdr, dict(init_value=1.0, first_cycle_steps=10, cycle_mult=1.5), "cycle_mult"),
    (schedules.sgdr, dict(init_value=1.0, first_cycle_steps=10, peak_decay=0.0), "peak_decay"),
    (schedules.cyclical, dict(base_value=0.1, max_value=1.0, step_size=0), "step_size"),
    (schedules.cyclical, dict(base_value=0.1, max_value=1.0, step_size=5, step_size_down=-1), "step_size_down"),
    (schedules.cyclical, dict(base_value=0.1, max_value=1.0, step_size=5, mode="triangle"), "mode"),
    (schedules.cyclical, dict(base_value=0.1, max_value=1.0, step_size=5, gamma=1.5), "gamma"),
    (schedules.one_cycle, dict(total_steps=100, peak_value=1.0, pct_start=0.0), "pct_start"),
    (schedules.one_cycle, dict(total_steps=100, peak_value=1.0, pct_start=1.0), "pct_start"),
    (schedules.one_cycle, dict(total_steps=1, peak_value=1.0), "total_steps"),
    (schedules.one_cycle, dict(total_steps=100, peak_value=1.0, anneal="cosine"), "anneal"),
    (schedules.one_cycle, dict(total_steps=100, peak_value=1.0, div_factor=0.0), "div_factor"),
    (schedules.one_cycle, dict(total_steps=10, peak_value=1.0, pct_start=0.1), "empty phase"),
    (schedules.lr_range, dict(min_value=1.0, max_value=0.1), "max_value"),
    (schedules.lr_range, dict(min_value=0.0, max_value=1.0), "min_value"),
    (schedules.lr_range, dict(num_steps=1), "num_steps"),
    (schedules.lr_range, dict(mode="log"), "mode"),
    (schedules.swa_lr, dict(init_value=1.0, swa_value=0.1, anneal_steps=-1), "anneal_steps"),
    (schedules.swa_lr, dict(init_value=1.0, swa_value=0.1, anneal="cosine"), "anneal"),
    (schedules.warmup, dict(schedule=1.0, warmup_steps=-1), "warmup_steps"),
    (schedules.warmup, dict(schedule=1.0, warmup_steps=5, mode="exp"), "mode"),
    (schedules.join, dict(schedules=[1.0, 2.0], boundaries=[]), "boundaries"),
    (schedules.join, dict(schedules=[1.0, 2.0, 3.0], boundaries=[5, 5]), "boundaries"),
    (schedules.wsd, dict(peak_value=1.0, total_steps=100, decay_shape="exp"), "decay_shape"),
    (schedules.wsd, dict(peak_value=1.0, total_steps=100, warmup_steps=90, decay_steps=20), "warmup_steps"),
]


@pytest.mark.parametrize("fn,kwargs,name", BAD, ids=[f"{f.__name__}-{n}" for f, _, n in BAD])
def test_bad_arguments_raise(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


MAKERS = sorted(n for n in schedules.__all__ if inspect.isfunction(getattr(schedules, n))
                and inspect.signature(getattr(schedules, n)).return_annotation == "Schedule")


def test_every_schedule_has_a_bad_argument_case():
    assert set(MAKERS) - {"constant"} == {f.__name__ for f, _, _ in BAD} - {"lr_finder"}


@pytest.mark.parametrize("name", MAKERS)
def test_jit_vmap_and_traced_step(name):
    example = {
        "constant": (0.3,), "factor": (1.0, 0.9, 0.1), "multi_factor": (1.0, 0.5, [3, 7]),
        "polynomial": (1.0, 0.1, 2.0, 10), "cosine": (1.0, 10, 0.1), "sgdr": (1.0, 4, 0.0, 2),
        "cyclical": (0.1, 1.0, 3, "triangular2"), "one_cycle": (20, 1.0), "lr_range": (1e-3, 1.0, 10),
        "swa_lr": (1.0, 0.1, 5), "warmup": (schedules.cosine(1.0, 10), 3),
        "join": ([schedules.constant(1.0), schedules.cosine(0.5, 5)], [4]),
        "wsd": (1.0, 20, 3, 0.25, "1-sqrt", 0.05),
    }[name]
    s = getattr(schedules, name)(*example)
    steps = jnp.arange(25)
    eager = np.array([float(s(int(t))) for t in steps])
    np.testing.assert_allclose(jax.jit(jax.vmap(s))(steps), eager, rtol=1e-6)
    np.testing.assert_allclose([float(jax.jit(s)(jnp.int32(t))) for t in (0, 7, 24)], eager[[0, 7, 24]], rtol=1e-6)
    assert np.all(np.isfinite(eager))
