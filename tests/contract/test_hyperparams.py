"""Reading hyperparameters from a state, and changing them between jit-compiled steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import random_grads, random_tree

import optimizers
import schedules


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


GRADS = [_f32(g) for g in random_grads(6, seed=1)]
PARAMS = _f32(random_tree(np.random.default_rng(2)))


def test_current_values_are_readable():
    lr = lambda t: 0.1 * 0.5**t  # noqa: E731
    b1 = lambda t: 0.95 - 0.01 * t  # noqa: E731
    tx = optimizers.adamw(lr, b1=b1, weight_decay=0.05)
    state = tx.init(PARAMS)
    assert set(optimizers.get_hyperparams(state)) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}
    for k, g in enumerate(GRADS):
        _, state = jax.jit(tx.update)(g, state, PARAMS)
        hp = optimizers.get_hyperparams(state)
        np.testing.assert_allclose(hp["learning_rate"], lr(k), rtol=1e-6)
        np.testing.assert_allclose(hp["b1"], b1(k), rtol=1e-6)
        np.testing.assert_allclose(hp["weight_decay"], 0.05, rtol=1e-6)


def test_momentum_is_readable_under_its_name():
    state = optimizers.sgd(0.1, momentum=0.9).init(PARAMS)
    np.testing.assert_allclose(optimizers.get_hyperparams(state)["momentum"], 0.9, rtol=1e-6)


def test_set_learning_rate_without_recompiling():
    tx = optimizers.adam(1e-2)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # runs once per trace, not per call
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, tx.init(PARAMS)
    for k, g in enumerate(GRADS):
        if k == 3:
            state = optimizers.set_hyperparams(state, learning_rate=1e-3)
        params, state = step(params, state, g)
    assert len(traces) == 1
    # The same as three steps at 1e-2 and three at 1e-3 with a schedule.
    want_tx = optimizers.adam(lambda t: jnp.where(t < 3, 1e-2, 1e-3))
    want, want_state = PARAMS, want_tx.init(PARAMS)
    for g in GRADS:
        u, want_state = want_tx.update(g, want_state, want)
        want = optax.apply_updates(want, u)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_name_two_transforms_hold_is_qualified_and_set_one_by_one():
    """Two transforms' values are never mixed: each is read and set under its position in the chain."""
    tx = optax.chain(optimizers.trace(0.9), optimizers.rmsprop(1e-3, momentum=0.5))
    state = tx.init(PARAMS)
    held = optimizers.get_hyperparams(state)
    assert "momentum" not in held and float(held["0/momentum"]) == pytest.approx(0.9)
    assert float(held["1/1/momentum"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="momentum is held by several transforms.*0/momentum.*1/1/momentum"):
        optimizers.set_hyperparams(state, momentum=0.2)
    state = optimizers.set_hyperparams(state, **{"0/momentum": 0.2, "1/1/momentum": 0.3})
    values = [s.hyperparams["momentum"] for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "hyperparams"))
              if hasattr(s, "hyperparams") and "momentum" in s.hyperparams]
    assert [float(v) for v in values] == [pytest.approx(0.2), pytest.approx(0.3)]
    assert all(v.dtype == jnp.float32 for v in values)


def test_groups_are_read_and_set_by_label():
    """``optax.multi_transform`` with two learning rates: each group's, by its label."""
    params = {"enc": PARAMS, "head": PARAMS}
    tx = optax.multi_transform({"enc": optimizers.adam(1e-3), "head": optimizers.sgd(1e-2)},
                               {"enc": "enc", "head": "head"})
    state = tx.init(params)
    held = optimizers.get_hyperparams(state)
    assert float(held["enc/learning_rate"]) == pytest.approx(1e-3)
    assert float(held["head/learning_rate"]) == pytest.approx(1e-2)
    state = optimizers.set_hyperparams(state, **{"head/learning_rate": 0.5})
    grads = {"enc": GRADS[0], "head": GRADS[0]}
    u, _ = jax.jit(tx.update)(grads, state, params)
    for a, g in zip(jax.tree.leaves(u["head"]), jax.tree.leaves(GRADS[0])):
        np.testing.assert_allclose(a, -0.5 * np.asarray(g), rtol=1e-6)
    want, _ = optimizers.adam(1e-3).update(GRADS[0], optimizers.adam(1e-3).init(PARAMS), PARAMS)
    for a, b in zip(jax.tree.leaves(u["enc"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_set_unknown_name_raises():
    with pytest.raises(ValueError, match="no hyperparameter named \\['lr'\\].*learning_rate"):
        optimizers.set_hyperparams(optimizers.adam(1e-3).init(PARAMS), lr=1e-4)


def test_works_through_inject_hyperparams():
    tx = optax.inject_hyperparams(optimizers.adam)(learning_rate=schedules.constant(3e-3))
    state = tx.init(PARAMS)
    _, state = tx.update(GRADS[0], state, PARAMS)
    np.testing.assert_allclose(optimizers.get_hyperparams(state)["learning_rate"], 3e-3, rtol=1e-6)


def _nnx_model():
    return nnx.Linear(3, 2, rngs=nnx.Rngs(0))


def test_flax_nnx_optimizer_state():

    x = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    loss = lambda m: jnp.mean(m(x) ** 2)  # noqa: E731

    @nnx.jit
    def step(m, opt):
        opt.update(m, nnx.grad(loss)(m))

    model = _nnx_model()
    opt = nnx.Optimizer(model, optimizers.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)
    hp = optimizers.get_hyperparams(opt.opt_state)
    assert set(hp) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}
    assert all(isinstance(v, jax.Array) for v in hp.values()), {k: type(v) for k, v in hp.items()}
    np.testing.assert_allclose(hp["learning_rate"], 1e-2, rtol=1e-6)
    step(model, opt)
    new = optimizers.set_hyperparams(opt.opt_state, learning_rate=1e-3)
    assert jax.tree.structure(new) == jax.tree.structure(opt.opt_state)  # kept in Flax's wrappers
    opt.opt_state = new
    np.testing.assert_allclose(optimizers.get_hyperparams(opt.opt_state)["learning_rate"], 1e-3, rtol=1e-6)
    step(model, opt)
    # The same as one step at 1e-2 and one at 1e-3 with a schedule.
    want_model = _nnx_model()
    want_opt = nnx.Optimizer(want_model, optimizers.adamw(lambda t: jnp.where(t < 1, 1e-2, 1e-3), weight_decay=0.1),
                             wrt=nnx.Param)
    step(want_model, want_opt), step(want_model, want_opt)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(want_model, nnx.Param)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flax_train_state():
    state = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=optimizers.sgd(0.1, momentum=0.9))
    hp = optimizers.get_hyperparams(state.opt_state)
    assert all(isinstance(v, jax.Array) for v in hp.values())
    np.testing.assert_allclose(hp["momentum"], 0.9, rtol=1e-6)
    state = state.replace(opt_state=optimizers.set_hyperparams(state.opt_state, learning_rate=0.05))
    np.testing.assert_allclose(optimizers.get_hyperparams(state.opt_state)["learning_rate"], 0.05, rtol=1e-6)


@pytest.mark.parametrize("values, match", [
    (dict(learning_rate=-1.0), r"set_hyperparams \(scale_by_learning_rate\): learning_rate must be in \[0.0, inf\]"),
    (dict(b1=1.5), r"set_hyperparams \(scale_by_adam\): b1 must be in \[0.0, 1.0\)"),
    (dict(learning_rate="0.01"), r"learning_rate must be a real number"),
    (dict(learning_rate=lambda t: 0.1), r"learning_rate must be a number or a scalar array, got the schedule"),
])
def test_set_values_are_checked_as_the_constructor_checks_them(values, match):
    """``set_hyperparams`` holds a new value to its transform's type and range, naming it."""
    state = optimizers.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match=match):
        optimizers.set_hyperparams(state, **values)


def test_every_optimizer_refuses_a_negative_learning_rate_set_by_hand():
    from optimizers.contract.registry import declared_optimizers
    from registry import KWARGS

    for name, declared in declared_optimizers().items():
        state = declared.build(**{**KWARGS[name], "learning_rate": 1e-3}).init(PARAMS)
        keys = [k for k in optimizers.get_hyperparams(state) if k.split("/")[-1] == "learning_rate"]
        assert keys, name
        for key in keys:
            with pytest.raises(ValueError, match="learning_rate must be in"):
                optimizers.set_hyperparams(state, **{key: -1.0})
