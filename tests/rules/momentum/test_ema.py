import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import assert_trees_close, check_reference, random_grads, run_updates

from optimizers.rules.momentum.ema import scale_by_ema


def _ema_reference(grads, beta):
    m = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads):
        m = beta(t) * m + (1 - beta(t)) * g
        yield m


def test_scale_by_ema_matches_formula():
    grads = random_grads(25, seed=1)
    beta = lambda t: 0.5 + 0.4 * t / 25  # noqa: E731  (a schedule, read at count t = 0, 1, ...)
    got = run_updates(scale_by_ema(beta), grads)
    check_reference(got, grads, lambda gs: _ema_reference(gs, beta))


def test_scale_by_ema_is_optax_ema_without_debias():
    grads = random_grads(30, seed=2)
    with jax.enable_x64(True):
        got = run_updates(scale_by_ema(0.9), grads, dtype=np.float64)
        want = run_updates(optax.ema(0.9, debias=False, accumulator_dtype=jnp.float64), grads, dtype=np.float64)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-12)
