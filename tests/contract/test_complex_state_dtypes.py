"""Complex state dtypes (``mu_dtype``, ``accumulator_dtype``): stored as given, as optax stores them."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import optimizers


def _complex_tree(rng, steps):
    shapes = {"w": (4, 3), "b": (3,)}
    draw = lambda s: rng.normal(size=s) + 1j * rng.normal(size=s)  # noqa: E731
    p0 = {k: draw(s).astype(np.complex64) for k, s in shapes.items()}
    return p0, [{k: draw(s).astype(np.complex64) for k, s in shapes.items()} for _ in range(steps)]


def _real_tree(rng, steps):
    shapes = {"w": (4, 3), "b": (3,)}
    p0 = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    return p0, [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]


def _pairs(tree):
    """Complex leaves as (real, imaginary) pairs, so a comparison sees both parts."""
    return jax.tree.map(lambda x: np.stack([np.real(x), np.imag(x)]).astype(np.float64), tree)


def _first_moment(state):
    """The first-moment buffer (``mu`` or ``trace``) of a chain's state."""
    for s in state:
        for name in ("mu", "trace"):
            if hasattr(s, name):
                return getattr(s, name)
    raise AssertionError(f"no first moment in {state}")


def _run(tx, params, grads):
    """Params, state after each step; the params as optax.apply_updates leaves them (in their dtype)."""
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for g in grads:
        with warnings.catch_warnings():  # optax's complex update of a real param: apply_updates keeps its real part
            warnings.simplefilter("ignore")
            params, state = step(params, state, g)
        out.append((jax.tree.map(np.asarray, params), state))
    return out


CASES = {
    "adam": (lambda m: optimizers.adam(0.05, mu_dtype=m), lambda m: optax.adam(0.05, mu_dtype=m)),
    "adam nesterov": (lambda m: optimizers.adam(0.05, b1=0.8, mu_dtype=m, nesterov=True),
                      lambda m: optax.adam(0.05, b1=0.8, mu_dtype=m, nesterov=True)),
    "adamw": (lambda m: optimizers.adamw(0.05, weight_decay=0.1, mu_dtype=m),
              lambda m: optax.adamw(0.05, weight_decay=0.1, mu_dtype=m)),
    "sgd momentum": (lambda m: optimizers.sgd(0.05, momentum=0.9, accumulator_dtype=m),
                     lambda m: optax.sgd(0.05, momentum=0.9, accumulator_dtype=m)),
    "sgd nesterov": (lambda m: optimizers.sgd(0.05, momentum=0.9, nesterov=True, accumulator_dtype=m),
                     lambda m: optax.sgd(0.05, momentum=0.9, nesterov=True, accumulator_dtype=m)),
}


@pytest.mark.parametrize("kind", ["complex", "real"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_complex_first_moment_matches_optax(case, kind):
    ours, theirs = CASES[case]
    rng = np.random.default_rng(len(case) + len(kind))
    params, grads = (_complex_tree if kind == "complex" else _real_tree)(rng, 25)
    got, want = _run(ours(jnp.complex64), params, grads), _run(theirs(jnp.complex64), params, grads)
    for (g, gs), (w, ws) in zip(got, want):
        assert jax.tree.map(lambda a: a.dtype, g) == jax.tree.map(lambda a: a.dtype, w)  # the params keep their dtype
        # the same float32 operations in another order: a few roundings per step over 25 steps
        assert_trees_close(_pairs(g), _pairs(w), rtol=2e-5)
        # the first moment is stored complex64, as given, with the numbers optax stores
        assert all(x.dtype == jnp.complex64 for x in jax.tree.leaves(_first_moment(gs)))
        assert_trees_close(_pairs(_first_moment(gs)), _pairs(_first_moment(ws)), rtol=2e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(got[-1][0]), jax.tree.leaves(params)))
    assert moved > 0.1


@pytest.mark.parametrize("kind", ["complex", "real"])
def test_complex_nu_dtype_keeps_the_second_moment_real(kind):
    """optax has no nu_dtype; its second moment holds |g|^2, real numbers. Here a complex nu_dtype
    means its real dtype (complex64: float32), and the steps are optax's."""
    rng = np.random.default_rng(3)
    params, grads = (_complex_tree if kind == "complex" else _real_tree)(rng, 20)
    tx = optimizers.adam(0.05, mu_dtype=jnp.complex64, nu_dtype=jnp.complex64)
    state = tx.init(params)
    nu = state[0].nu
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nu))
    got, want = _run(tx, params, grads), _run(optax.adam(0.05, mu_dtype=jnp.complex64), params, grads)
    for (g, _), (w, _) in zip(got, want):
        assert_trees_close(_pairs(g), _pairs(w), rtol=2e-5)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(got[-1][1][0].nu))


def test_real_state_dtype_on_complex_params_is_still_its_complex_form():
    params = {"w": np.ones(3, np.complex64), "r": np.ones(2, np.float32)}
    state = optimizers.adam(0.1, mu_dtype=jnp.bfloat16).init(params)[0]
    assert state.mu["w"].dtype == jnp.complex64 and state.mu["r"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.float32


@pytest.mark.parametrize("bad", ["int32", "bool", "bogus"])
def test_non_floating_state_dtypes_still_raise(bad):
    with pytest.raises(ValueError, match="mu_dtype"):
        optimizers.adam(0.1, mu_dtype=bad)
    with pytest.raises(ValueError, match="accumulator_dtype"):
        optimizers.sgd(0.1, momentum=0.9, accumulator_dtype=bad)
