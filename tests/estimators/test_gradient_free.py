import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers

CURVATURE = jnp.linspace(1.0, 10.0, 100)


def _quadratic(p):
    return 0.5 * jnp.sum(CURVATURE * p["x"] ** 2)


@pytest.mark.parametrize("make", [optimizers.forward_value_and_grad, optimizers.zeroth_order_value_and_grad])
def test_estimate_is_unbiased(make):
    """The mean of N estimates lies within 5 standard errors of the true gradient, per coordinate."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(1, 3, size=8), jnp.float32)
    f = lambda p: 0.5 * jnp.sum(a * p["x"] ** 2)  # noqa: E731
    params = {"x": jnp.asarray(rng.normal(size=8), jnp.float32)}
    n = 50_000
    value, g = jax.jit(make(f, n))(jax.random.key(1), params)
    true = np.asarray(a * params["x"], np.float64)
    # Var[(grad . v) v_j] = |grad|^2 + grad_j^2 for v ~ N(0, I).
    se = np.sqrt((np.sum(true**2) + true**2) / n)
    assert np.all(np.abs(np.asarray(g["x"]) - true) < 5 * se), (np.asarray(g["x"]) - true) / se
    np.testing.assert_allclose(value, f(params), rtol=1e-6)


def _descend(value_and_grad, learning_rate, steps):
    tx = optimizers.sgd(learning_rate)
    params = {"x": jnp.ones(100)}

    def body(carry, key):
        p, s = carry
        _, g = value_and_grad(key, p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda c, keys: jax.lax.scan(body, c, keys))
    (params, _), _ = run((params, tx.init(params)), jax.random.split(jax.random.key(0), steps))
    return float(_quadratic(params))


def test_forward_gradient_descent_minimises_a_100_dim_quadratic():
    # From f = 275: 5,000 forward passes (one jvp each) reach f < 1e-3.
    # The step must stay below 2 / (L (d + 2)) = 0.002 for the estimate's variance.
    assert _descend(optimizers.forward_value_and_grad(_quadratic), 1e-3, 5000) < 1e-3


def test_zeroth_order_descent_minimises_a_100_dim_quadratic():
    # 5,000 steps of 2 evaluations each reach f < 1e-2 (from 275).
    assert _descend(optimizers.zeroth_order_value_and_grad(_quadratic, smoothing=1e-3), 1e-3, 5000) < 1e-2


def test_gradientless_descent_minimises_a_100_dim_quadratic():
    gld = optimizers.gradientless_descent(_quadratic, max_radius=1.0, min_radius=1e-4)
    params = {"x": jnp.ones(100)}

    def body(carry, key):
        return gld.step(key, *carry), None

    run = jax.jit(lambda c, keys: jax.lax.scan(body, c, keys))
    (params, state), _ = run((params, gld.init(params)), jax.random.split(jax.random.key(0), 4000))
    assert int(state.evaluations) == 1 + 4000 * 15  # radii 1, 1/2, ..., 2^-14
    assert float(_quadratic(params)) < 1e-4 and float(state.value) == pytest.approx(float(_quadratic(params)))


def test_gradientless_descent_never_increases_the_loss():
    gld = optimizers.gradientless_descent(_quadratic, 2.0, 1e-3)
    params, state = {"x": jnp.ones(100)}, gld.init({"x": jnp.ones(100)})
    values = []
    for k in range(20):
        params, state = jax.jit(gld.step)(jax.random.key(k), params, state)
        values.append(float(state.value))
    assert all(b <= a for a, b in zip(values, values[1:]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tangents"):
        optimizers.forward_value_and_grad(_quadratic, 0)
    with pytest.raises(ValueError, match="smoothing"):
        optimizers.zeroth_order_value_and_grad(_quadratic, smoothing=0.0)
    with pytest.raises(ValueError, match="min_radius"):
        optimizers.gradientless_descent(_quadratic, 1.0, 2.0)


def _slow_upstream(n, delay, calls):
    for k in range(n):
        time.sleep(delay)
        calls.append(k)
        yield k


def test_data_echoing_repeats_each_batch():
    assert list(optimizers.data_echoing(range(3), 2)) == [0, 0, 1, 1, 2, 2]
    shuffled = list(optimizers.data_echoing(range(10), 3, shuffle_buffer=5, seed=1))
    assert sorted(shuffled) == sorted(list(range(10)) * 3) and shuffled != sorted(shuffled)


def test_data_echoing_gains_wall_clock_time_with_a_slow_upstream():
    """40 training steps at 1 ms each from an upstream that takes 20 ms a batch."""

    def train(batches):
        calls, start = [], time.perf_counter()
        for _, _ in zip(range(40), batches(calls)):
            time.sleep(0.001)
        return time.perf_counter() - start, len(calls)

    plain, plain_calls = train(lambda calls: _slow_upstream(100, 0.02, calls))
    echoed, echoed_calls = train(lambda calls: optimizers.data_echoing(_slow_upstream(100, 0.02, calls), 4))
    assert plain_calls == 40 and echoed_calls == 10
    assert echoed < plain / 2  # ~4x fewer upstream batches; at least 2x faster on a busy machine
