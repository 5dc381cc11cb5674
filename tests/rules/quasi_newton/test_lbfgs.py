"""L-BFGS: the direction against the matrix form of the inverse-Hessian update (float64), and optax.lbfgs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

import optimizers

N = 6


def _history(steps, seed):
    """Params and gradients of a strictly convex quadratic plus a small random term (y^T s > 0)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, N))
    hess = a @ a.T + N * np.eye(N)
    ws = [rng.normal(size=N) for _ in range(steps)]
    gs = [hess @ w + 0.01 * rng.normal(size=N) for w in ws]
    return ws, gs


def _lbfgs_direction(ws, gs, k, m, scale_init=True):
    r"""H_k g_k from the matrix recursion H <- V^T H V + rho s s^T (Nocedal & Wright, Eq. 7.19), built explicitly."""
    pairs = [(ws[j + 1] - ws[j], gs[j + 1] - gs[j]) for j in range(max(0, k - m), k)]
    if not scale_init:
        gamma = 1.0
    elif k == 0:
        gamma = min(1.0, 1.0 / np.linalg.norm(gs[0]))
    else:
        s, y = ws[k] - ws[k - 1], gs[k] - gs[k - 1]
        gamma = s @ y / (y @ y)
    h = gamma * np.eye(N)
    for s, y in pairs:
        rho = 1.0 / (y @ s)
        v = np.eye(N) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h @ gs[k]


@pytest.mark.parametrize("memory_size,steps", [(5, 4), (3, 9)])  # memory never full / full and rolling
@pytest.mark.parametrize("scale_init", [True, False])
def test_direction_is_the_matrix_form(memory_size, steps, scale_init):
    ws, gs = _history(steps, seed=memory_size)
    tx = optimizers.scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init)
    with jax.enable_x64(True):
        state, update = tx.init(jnp.asarray(ws[0])), jax.jit(tx.update)
        for k in range(steps):
            u, state = update(jnp.asarray(gs[k]), state, jnp.asarray(ws[k]))
            want = _lbfgs_direction(ws, gs, k, memory_size, scale_init)
            np.testing.assert_allclose(np.asarray(u), want, rtol=1e-10, atol=1e-12)
    # float32: within float32's roundoff of the float64 direction
    state, update = tx.init(jnp.asarray(ws[0], jnp.float32)), jax.jit(tx.update)
    for k in range(steps):
        u, state = update(jnp.asarray(gs[k], jnp.float32), state, jnp.asarray(ws[k], jnp.float32))
        assert_close(u, _lbfgs_direction(ws, gs, k, memory_size, scale_init), rtol=1e-4)


def test_direction_on_a_pytree_is_that_of_the_flat_vector():
    ws, gs = _history(7, seed=11)
    split = lambda v: {"a": v[:2].reshape(1, 2), "b": v[2:]}  # noqa: E731
    tx = optimizers.scale_by_lbfgs(memory_size=3)
    with jax.enable_x64(True):
        state = tx.init(split(jnp.asarray(ws[0])))
        for k in range(7):
            u, state = tx.update(split(jnp.asarray(gs[k])), state, split(jnp.asarray(ws[k])))
            flat = np.concatenate([np.ravel(u["a"]), u["b"]])
            np.testing.assert_allclose(flat, _lbfgs_direction(ws, gs, k, 3), rtol=1e-10, atol=1e-12)


def rosenbrock(w):
    return jnp.sum(100 * (w[1:] - w[:-1] ** 2) ** 2 + (1 - w[:-1]) ** 2)


def quadratic(w):
    return 0.5 * jnp.sum(jnp.arange(1.0, w.size + 1) * w**2) + jnp.sum(w)


def solve(tx, f, w, steps):
    """The iterates of ``tx`` on ``f`` in one jitted scan, reusing the line search's value and gradient."""
    value_and_grad = optax.value_and_grad_from_state(f)

    def body(carry, _):
        w, state = carry
        v, g = value_and_grad(w, state=state)
        u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        w = optax.apply_updates(w, u)
        return (w, state), w

    _, ws = jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=steps))(w)
    return np.asarray(ws)


OPTAX_SEARCH = dict(max_linesearch_steps=20, initial_guess_strategy="one", approx_dec_rtol=1e-6)


@pytest.mark.parametrize("f,w0", [(quadratic, [1.0, -2.0, 3.0, 0.5]), (rosenbrock, [-1.2, 1.0]),
                                  (rosenbrock, [-1.2, 1.0, -1.2, 1.0])])
def test_iterates_are_optax_lbfgs(f, w0):
    w0 = jnp.asarray(w0, jnp.float32)
    ours = solve(optimizers.lbfgs(linesearch=optimizers.scale_by_zoom_linesearch(**OPTAX_SEARCH)), f, w0, 30)
    theirs = solve(optax.lbfgs(), f, w0, 30)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(ours[0] - w0) > 1e-3  # it moved


def test_our_default_reaches_the_minima():
    w = solve(optimizers.lbfgs(), rosenbrock, jnp.asarray([-1.2, 1.0], jnp.float32), 60)[-1]
    np.testing.assert_allclose(w, [1.0, 1.0], atol=1e-3)
    w = solve(optimizers.lbfgs(), quadratic, jnp.zeros(5, jnp.float32), 20)[-1]
    # float32 resolves f to eps|f| ~ 1e-7, a distance sqrt(2e-7/1) ~ 4e-4 from the minimum: the strong
    # Wolfe decrease cannot be seen closer (optax's approximate condition goes further)
    np.testing.assert_allclose(w, -1 / np.arange(1.0, 6.0), atol=4e-4)


def test_optax_line_search_is_accepted_and_memory_one_is_steepest_descent_at_first():
    w0 = jnp.asarray([-1.2, 1.0], jnp.float32)
    ours = solve(optimizers.lbfgs(memory_size=1, linesearch=optax.scale_by_zoom_linesearch(20)), rosenbrock, w0, 10)
    theirs = solve(optax.lbfgs(memory_size=1, linesearch=optax.scale_by_zoom_linesearch(20)), rosenbrock, w0, 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_without_line_search_the_step_is_the_scaled_direction():
    tx = optimizers.lbfgs(learning_rate=0.1, linesearch=None)
    w = jnp.asarray([3.0, 4.0])
    u, _ = tx.update(w, tx.init(w), w)
    np.testing.assert_allclose(u, -0.1 * np.array([3.0, 4.0]) / 5.0, rtol=1e-6)


def test_state_round_trips_a_checkpoint_and_resumes():
    from optimizers import checkpoint

    tx = optimizers.lbfgs()
    w = jnp.asarray([-1.2, 1.0, 0.5], jnp.float32)
    value_and_grad = optax.value_and_grad_from_state(rosenbrock)

    @jax.jit
    def step(w, state):
        v, g = value_and_grad(w, state=state)
        u, state = tx.update(g, state, w, value=v, grad=g, value_fn=rosenbrock)
        return optax.apply_updates(w, u), state

    state = tx.init(w)
    for _ in range(4):
        w, state = step(w, state)
    restored = checkpoint.from_bytes(tx.init(w), checkpoint.to_bytes(state))
    a, b = step(w, state), step(w, restored)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="memory_size"):
        optimizers.lbfgs(memory_size=0)
    with pytest.raises(ValueError, match="memory_size"):
        optimizers.scale_by_lbfgs(memory_size=2.5)
    tx = optimizers.scale_by_lbfgs()
    w = jnp.ones(3)
    with pytest.raises(ValueError, match="params"):
        tx.update(w, tx.init(w))
    with pytest.raises(TypeError, match="value_fn does not take"):
        solver = optimizers.lbfgs()
        solver.update(w, solver.init(w), w, value=1.0, grad=w, value_fn=rosenbrock, batch=3)
