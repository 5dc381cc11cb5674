"""apply_if_finite: a skipped step leaves no trace, giving up is visible, check_finite reports it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import jit_traced_once, random_tree
from registry import NAMES, make

import optimizers


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "scale": ()}  # few leaves: one compilation per test is most of its time
PARAMS = _f32(random_tree(np.random.default_rng(0), SHAPES))
GRADS = [_f32(random_tree(np.random.default_rng(k + 1), SHAPES)) for k in range(12)]
BAD = {3: np.nan, 7: np.inf, 8: -np.inf}  # step -> the value put into one entry of one leaf


def _poison(grads, value):
    w = np.array(grads["dense"]["w"])
    w[1, 2] = value
    return {**grads, "dense": {**grads["dense"], "w": jnp.asarray(w)}}


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()  # bit for bit


def _jit_step(tx):
    """The jit-compiled step; a second trace (finite and non-finite steps in two programs) fails."""
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jit_traced_once(step)


def _run(step, state, grads):
    params = PARAMS
    for g in grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("name", NAMES)
def test_skipped_steps_leave_no_trace(name):
    tx = optimizers.apply_if_finite(make(name), max_consecutive_skips=2)  # steps 7, 8: exactly the limit
    step = _jit_step(tx)
    params, state, consecutive = PARAMS, tx.init(PARAMS), []
    for t, g in enumerate(GRADS):
        before = (params, state.inner_state)
        params, state = step(params, state, _poison(g, BAD[t]) if t in BAD else g)
        if t in BAD:  # params and inner state (its counts included) bit-identical
            _assert_identical((params, state.inner_state), before)
        assert bool(state.last_finite) == (t not in BAD)
        consecutive.append(int(state.consecutive_skips))
    assert consecutive == [0, 0, 0, 1, 0, 0, 0, 1, 2, 0, 0, 0]
    assert (int(state.total_skips), int(state.nan_updates)) == (3, 0)
    optimizers.check_finite(state)
    kept = [g for t, g in enumerate(GRADS) if t not in BAD]
    # The same compiled step on the clean steps only: exactly the same params and inner state.
    clean_params, clean_state = _run(step, tx.init(PARAMS), kept)
    _assert_identical((params, state.inner_state), (clean_params, clean_state.inner_state))
    # The bare optimizer on the clean steps: another program, which XLA fuses differently
    # (the first step agrees bit for bit, later ones can move the last bit): at most 2 ulp
    # after 9 steps (2.4e-7 measured on params up to 2.3), well inside 1e-6.
    bare_params, bare_state = _run(_jit_step(make(name)), make(name).init(PARAMS), kept)
    for a, b in zip(jax.tree.leaves((params, state.inner_state)), jax.tree.leaves((bare_params, bare_state)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(bare_params["dense"]["w"], PARAMS["dense"]["w"])


def test_skip_keeps_signed_zeros():
    tx = optimizers.apply_if_finite(optimizers.sgd(0.1, momentum=0.9))
    params = {"w": jnp.array([-0.0, 0.0, 1.5, -2.0])}
    new, _ = _jit_step(tx)(params, tx.init(params), {"w": jnp.array([1.0, np.nan, 1.0, 1.0])})
    _assert_identical(new, params)


def test_gives_up_after_max_consecutive_skips():
    inner = optimizers.adam(0.1)
    tx = optimizers.apply_if_finite(inner, max_consecutive_skips=3)
    update = jax.jit(tx.update)
    _, state = update(GRADS[0], tx.init(PARAMS), PARAMS)
    good_inner, nan_grads = state.inner_state, _poison(GRADS[1], np.nan)
    for k in range(1, 4):
        u, state = update(nan_grads, state, PARAMS)
        assert all(np.array_equal(x, np.zeros_like(x)) for x in jax.tree.leaves(u))
        assert int(state.consecutive_skips) == k
    optimizers.check_finite(state)  # three skips: still within the limit
    u, state = update(nan_grads, state, PARAMS)  # the fourth in a row: gives up
    assert all(np.all(np.isnan(x)) for x in jax.tree.leaves(u))
    assert [int(state.consecutive_skips), int(state.total_skips), int(state.nan_updates)] == [3, 3, 1]
    _assert_identical(state.inner_state, good_inner)
    with pytest.raises(RuntimeError, match=r"gave up: 1 update\(s\) .*NaN.*3 in a row now, 3 in total"):
        optimizers.check_finite(state)
    u, state = update(GRADS[2], state, PARAMS)  # finite again: the inner step from its last good state
    want, _ = jax.jit(inner.update)(GRADS[2], good_inner, PARAMS)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # another compiled program: last-bit differences
    assert int(state.consecutive_skips) == 0 and bool(state.last_finite)
    with pytest.raises(RuntimeError, match="0 in a row now, 3 in total"):  # the NaN updates stay reported
        optimizers.check_finite(state)


def test_inside_chain_with_clipping():
    tx = optax.chain(optax.clip_by_global_norm(1.0), optimizers.apply_if_finite(optimizers.sgd(0.1, momentum=0.9)))
    step = _jit_step(tx)
    poisoned, _ = _run(step, tx.init(PARAMS), [GRADS[0], _poison(GRADS[1], np.inf), GRADS[2], GRADS[3]])
    clean, _ = _run(step, tx.init(PARAMS), [GRADS[0], GRADS[2], GRADS[3]])
    _assert_identical(poisoned, clean)


def _limit_one(learning_rate):
    return optimizers.apply_if_finite(optimizers.sgd(learning_rate), max_consecutive_skips=1)


CONTAINERS = {
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), _limit_one(0.1)),
    "lookahead": lambda: optimizers.lookahead(optimizer=_limit_one(0.1), sync_period=2),
    "inject_hyperparams": lambda: optax.inject_hyperparams(_limit_one)(learning_rate=0.1),
}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_check_finite_finds_the_state_anywhere(container):
    tx = CONTAINERS[container]()
    step = _jit_step(tx)
    params, state = step(PARAMS, tx.init(PARAMS), _poison(GRADS[0], np.nan))
    optimizers.check_finite(state)  # one skip: within the limit
    _, state = step(params, state, _poison(GRADS[1], np.nan))
    with pytest.raises(RuntimeError, match="gave up"):
        optimizers.check_finite(state)


def test_check_finite_without_the_wrapper_raises():
    with pytest.raises(ValueError, match="no apply_if_finite state"):
        optimizers.check_finite(optimizers.adam(0.1).init(PARAMS))


def test_passes_extra_args_to_reduce_on_plateau():
    inner = optax.chain(optimizers.sgd(0.1), optimizers.reduce_on_plateau(factor=0.5, patience=0))
    tx = optimizers.apply_if_finite(inner)

    @jax.jit
    def step(params, state, grads, value):
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    # Counted, the skipped step's value -100 would be the best forever and halve the scale at
    # every later check; skipped, the scale halves twice (0.95, 0.97 after the best 0.9).
    values = [1.0, 0.9, -100.0, 0.95, 0.97, 0.5]
    grads = [_poison(g, np.nan) if t == 2 else g for t, g in enumerate(GRADS[:6])]
    params, state = PARAMS, tx.init(PARAMS)
    for g, v in zip(grads, values):
        params, state = step(params, state, g, v)
    clean_params, clean_state = PARAMS, tx.init(PARAMS)
    for t, (g, v) in enumerate(zip(grads, values)):
        if t != 2:
            clean_params, clean_state = step(clean_params, clean_state, g, v)
    _assert_identical((params, state.inner_state), (clean_params, clean_state.inner_state))
    plateau = state.inner_state[1]
    assert (float(plateau.scale), float(plateau.best), int(plateau.count)) == (0.25, 0.5, 5)


@pytest.mark.parametrize("value", [0, -1, 1.5, float("nan"), True])
def test_bad_max_consecutive_skips_raises(value):
    with pytest.raises(ValueError, match=rf"max_consecutive_skips must be .*got {value!r}"):
        optimizers.apply_if_finite(optimizers.sgd(0.1), max_consecutive_skips=value)
