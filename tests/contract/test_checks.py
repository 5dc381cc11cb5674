"""The pytree contract of every transform: mismatched trees are named, integer gradients refused,
float0 and None gradients zero updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import NAMES, make

from optimizers.contract.checks import first_difference

PARAMS = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}, "scale": jnp.full((), 0.5)}


def _grads(seed=0, tree=PARAMS):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=np.shape(p)), jnp.float32), tree)


def _renamed(tree):
    return {"dense": {"kernel": tree["dense"]["kernel"], "b": tree["dense"]["bias"]}, "scale": tree["scale"]}


def _reshaped(tree):
    return {**tree, "dense": {**tree["dense"], "bias": jnp.zeros(5)}}


MISMATCHES = {
    "renamed": (_renamed, r"\['dense'\]\['bias'\] is missing"),
    "reshaped": (_reshaped, r"\['dense'\]\['bias'\] has shape \(5,\), expected \(4,\)"),
    "extra": (lambda t: {**t, "new": jnp.ones(2)}, r"\['new'\] is not expected"),
}


@pytest.mark.parametrize("kind", sorted(MISMATCHES))
@pytest.mark.parametrize("name", NAMES)
def test_mismatched_updates_name_the_first_differing_path(name, kind):
    """With params, against them; without, against the state (when it holds per-param buffers
    and the update can run without params)."""
    change, where = MISMATCHES[kind]
    tx = make(name)
    state = tx.init(PARAMS)
    bad = change(_grads())
    with pytest.raises(ValueError, match=r"do not match the params.*" + where):
        tx.update(bad, state, PARAMS)
    if _holds_param_buffers(state) and _runs_without_params(tx, state):
        with pytest.raises(ValueError, match=r"do not match the optimizer state.*" + where):
            jax.jit(tx.update)(bad, state)


def _holds_param_buffers(state):
    return any(np.shape(leaf) == (3, 4) for leaf in jax.tree.leaves(state))


def _runs_without_params(tx, state):
    try:
        tx.update(_grads(), state)
    except ValueError as e:
        assert "needs params" in str(e)
        return False
    return True


def test_a_state_of_other_params_is_named():
    tx = make("adam")
    state = tx.init(_reshaped(PARAMS))
    with pytest.raises(ValueError, match=r"scale_by_adam: .*optimizer state.*\.mu\['dense'\]\['bias'\] has shape \(4,\), expected \(5,\)"):
        tx.update(_grads(), state, PARAMS)


def _with_non_floats(tree):
    return {**tree, "step": jnp.asarray(7, jnp.int32), "mask": jnp.array([True, False]), "none": None,
            "frozen": {"table": jnp.arange(6).reshape(2, 3)}}


def _zero_tangents(tree):
    """What ``jax.grad(..., allow_int=True)`` gives: float0 zeros for the integer and bool leaves."""
    return jax.tree.map(lambda x: np.zeros(np.shape(x), jax.dtypes.float0)
                        if not jnp.issubdtype(x.dtype, jnp.inexact) else x, tree)


@pytest.mark.parametrize("name", NAMES)
def test_integer_gradients_are_refused_float0_and_none_pass(name):
    """An integer or bool gradient is a ``ValueError`` naming its path (passed through, it was added to
    the params); float0 and ``None`` gradients are zero updates, and the float leaves get exactly the
    updates of the same tree without them."""
    tx = make(name)
    params, plain = _with_non_floats(PARAMS), PARAMS
    state, plain_state = tx.init(params), tx.init(plain)
    for leaf in ("step", "mask"):
        with pytest.raises(ValueError, match=rf"updates at \['{leaf}'\] are (int32|bool): an integer or bool"):
            tx.update({**_zero_tangents(_with_non_floats(_grads(0))), leaf: params[leaf]}, state, params)
    update = jax.jit(tx.update)
    for k in range(3):
        g = _grads(k)
        u, state = update(_zero_tangents(_with_non_floats(g)), state, params)
        v, plain_state = update(g, plain_state, plain)
        assert u["none"] is None
        for key in ("step", "mask", "frozen"):
            assert all(a.dtype == jax.dtypes.float0 for a in jax.tree.leaves(u[key]))
        for a, b in zip(jax.tree.leaves({k2: u[k2] for k2 in plain}), jax.tree.leaves(v)):
            np.testing.assert_array_equal(a, b)
        params = {**optax.apply_updates({k2: params[k2] for k2 in plain}, {k2: u[k2] for k2 in plain}),
                  **{k2: params[k2] for k2 in ("step", "mask", "none", "frozen")}}
        plain = optax.apply_updates(plain, v)


def test_float0_gradients_of_integer_params_pass_through():
    params = {"w": jnp.ones(3), "n": jnp.asarray(2, jnp.int32)}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * p["n"], allow_int=True)(params)
    tx = make("adamw")
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert u["n"].dtype == jax.dtypes.float0
    assert np.all(np.isfinite(u["w"]))


def test_first_difference():
    a = {"x": jnp.ones(2), "y": [jnp.ones(3), None]}
    assert first_difference(a, a) is None
    assert first_difference(a, {"x": jnp.ones(2), "y": [jnp.ones(3), jnp.ones(1)]}) == "['y'][1] has shape (1,), expected None"
    assert first_difference(a, {"x": jnp.ones(2)}) == "['y'][0] is missing"
    assert first_difference(a, {**a, "x": jnp.ones(2, jnp.bfloat16)}) is None
    assert first_difference(a, {**a, "x": jnp.ones(2, jnp.bfloat16)}, dtypes=True) == \
        "['x'] has dtype bfloat16, expected float32"
    assert "other node types" in first_difference((jnp.ones(1),), [jnp.ones(1)])
