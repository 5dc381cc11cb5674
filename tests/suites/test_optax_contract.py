"""optax's contract, for every optimizer and wrapper of the conformance suite (fused ones too).

A user swaps ``optax.`` for ``optimizers.`` and keeps optax's combinators; what optax's own
optimizers promise must then hold here too:

1. convergence on a 3-element parabola and on Rosenbrock from (0, 0), in float32 and in
   complex64 (where the rule takes complex params: the others raise ``TypeError`` at
   ``init``), in 10,000 jit-compiled steps, to within 3e-2, without recompiling after the
   first step (a single jit-compiled step called repeatedly compiles once);
2. ``update`` accepts unknown keyword arguments and ignores them;
3. ``optax.inject_hyperparams(factory)(**kwargs)`` gives the updates and the inner state
   (tree and values) of ``factory(**kwargs)``, for ``KWARGS`` and for the factory's defaults;
4. the state keeps its tree, shapes and dtypes through ``jax.lax.cond`` in every float and
   complex dtype, and the updates the gradients' dtype (values checked by
   ``test_conformance.test_keeps_dtype``);
5. ``optax.MultiSteps(tx, every_k_schedule=4)`` gives zero updates on the first three steps.

The tests never branch on a name; every entry of ``test_conformance.NAMES`` is enrolled.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import jit_traced_once, random_tree
from registry import CHAIN_NAMES, NAMES, factory, make


STEPS = 10_000
TOL = 3e-2
# A small tree (fewer ops to compile or to run eagerly): a matrix and a vector.
SHAPES = {"w": (2, 3), "b": (3,)}
PARAMS, *GRADS = [random_tree(np.random.default_rng(k), SHAPES) for k in range(5)]


DTYPES = ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"]


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _types(tree):
    """What a jit cache and ``lax.cond`` compare: the structure, and each leaf's shape, dtype and weak type."""
    return jax.tree.structure(tree), [(x.shape, jnp.dtype(x.dtype), x.weak_type) for x in jax.tree.leaves(tree)]


def _parabola(p):
    return jnp.sum(jnp.abs(p["w"] - p["target"]) ** 2)


def _rosenbrock(p):
    return jnp.abs(1 - p["x"]) ** 2 + 100 * jnp.abs(p["y"] - p["x"] ** 2) ** 2


def _problems(dtype):
    """(loss, start, minimum) of both problems; a complex dtype moves the parabola's minimum
    off the real axis (Rosenbrock's stays at (1, 1), the only zero of its loss)."""
    target = np.array([1.0, -2.0, 0.5])
    if jnp.issubdtype(dtype, jnp.complexfloating):
        target = target + 1j * np.array([0.5, 1.0, -1.0])
    cast = lambda tree: _cast(tree, dtype)  # noqa: E731
    parabola = cast({"w": np.array([-1.0, 1.0, 2.0]), "target": target})
    rosen = cast({"x": 0.0, "y": 0.0})
    return [(_parabola, parabola, {**parabola, "w": parabola["target"]}), (_rosenbrock, rosen, cast({"x": 1.0, "y": 1.0}))]


def _descent(loss, p):
    """The gradient of a real loss in the real-pair sense (JAX's ``grad`` gives its conjugate)."""
    grads = jax.tree.map(jnp.conj, jax.grad(loss)(p))
    return {**grads, "target": jnp.zeros_like(p["target"])} if "target" in p else grads


def _train(tx, loss, params, steps):
    """``params`` after ``steps`` (traced) steps of ``tx`` on ``loss``, in one loop."""
    def body(_, carry):
        p, s = carry
        u, s = tx.update(_descent(loss, p), s, p)
        return optax.apply_updates(p, u), s

    return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]


def _init_or_skip(tx, params):
    try:
        return tx.init(params)
    except TypeError as e:  # a rule that does not take complex params says so at init
        assert "complex" in str(e)
        pytest.skip(f"refuses complex params: {e}")


# complex64: the chain names (a fused transform runs its chain on complex params)
CONVERGENCE_CASES = [(n, jnp.float32) for n in NAMES] + [(n, jnp.complex64) for n in CHAIN_NAMES]


@pytest.mark.parametrize("name, dtype", CONVERGENCE_CASES, ids=[f"{n}-{jnp.dtype(d).name}" for n, d in CONVERGENCE_CASES])
def test_converges_without_recompiling_ignoring_unknown_keywords(name, dtype):
    tx = make(name)
    problems = _problems(dtype)
    _init_or_skip(tx, problems[0][1])
    starts = [p for _, p, _ in problems]
    train = jax.jit(lambda starts, steps: [_train(tx, f, p, steps) for (f, _, _), p in zip(problems, starts)])
    for (loss, _, minimum), final in zip(problems, train(starts, STEPS)):
        for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(minimum), strict=True):
            np.testing.assert_allclose(got, want, atol=TOL, err_msg=loss.__name__)
    # A step compiled once serves every step (the state keeps every leaf's type, weak types
    # too); keywords ``update`` does not know are accepted and change nothing.
    loss, params, _ = problems[1]

    def step(p, s):
        u, s = tx.update(_descent(loss, p), s, p, an_unknown_keyword=jnp.ones(3), value=loss(p))
        return optax.apply_updates(p, u), s

    step = jit_traced_once(step)

    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state)  # traced once: a retrace fails
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(train(starts, 3)[1]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _strip_injected(state):
    """``state`` with every ``inject_hyperparams`` state replaced by the state inside it."""
    injected = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)  # noqa: E731
    return jax.tree.map(lambda x: _strip_injected(x.inner_state) if injected(x) else x, state, is_leaf=injected)


def _own_defaults(build, kwargs):
    """Only the learning rate of ``kwargs``: the factory's defaults for everything else."""
    required = [k for k, p in inspect.signature(build).parameters.items()
                if p.default is inspect.Parameter.empty and k != "learning_rate"]
    if required:
        pytest.skip(f"the factory needs {required} besides the learning rate")
    return {"learning_rate": kwargs["learning_rate"]}


@pytest.mark.parametrize("which", ["kwargs", "defaults"])
@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_keeps_updates_and_state(name, which):
    build, kwargs, wrap = factory(name)
    kwargs = kwargs if which == "kwargs" else _own_defaults(build, kwargs)
    params, grads = _cast(PARAMS, jnp.float32), _cast(GRADS, jnp.float32)
    plain, injected = wrap(build(**kwargs)), wrap(optax.inject_hyperparams(build)(**kwargs))
    s_plain, s_injected = plain.init(params), injected.init(params)
    # Traced, as in a jit-compiled step: the factory then gets traced hyperparameters.
    traced = jax.eval_shape(injected.update, grads[0], s_injected, params)
    assert _types(traced) == _types(injected.update(grads[0], s_injected, params))
    for k, g in enumerate(grads):  # eager: the values of a few steps, without compiling
        u_plain, s_plain = plain.update(g, s_plain, params)
        u_injected, s_injected = injected.update(g, s_injected, params)
        for a, b in zip(jax.tree.leaves(u_injected), jax.tree.leaves(u_plain), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7, err_msg=f"updates of step {k}")
        inner = _strip_injected(s_injected)
        assert jax.tree.structure(inner) == jax.tree.structure(s_plain), f"step {k}"
        for a, b in zip(jax.tree.leaves(inner), jax.tree.leaves(s_plain), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=f"state of step {k}")
    if which == "kwargs":
        _check_set_learning_rate_is_used(build, kwargs, wrap, params, grads)


def _check_set_learning_rate_is_used(build, kwargs, wrap, params, grads):
    """A learning rate of 1e-3 set to 2e-3 in the injected state is used at the next step, as if scheduled."""
    injected = wrap(optax.inject_hyperparams(build)(**{**kwargs, "learning_rate": 1e-3}))
    switched = wrap(build(**{**kwargs, "learning_rate": lambda t: jnp.where(t < len(grads), 1e-3, 2e-3)}))
    s_injected, s_switched = injected.init(params), switched.init(params)
    for g in grads:
        _, s_injected = injected.update(g, s_injected, params)
        _, s_switched = switched.update(g, s_switched, params)
    inject = [s for s in jax.tree.leaves(s_injected, is_leaf=lambda x: isinstance(
        x, optax.InjectStatefulHyperparamsState)) if isinstance(s, optax.InjectStatefulHyperparamsState)][0]
    inject.hyperparams["learning_rate"] = jnp.full_like(inject.hyperparams["learning_rate"], 2e-3)
    u, _ = injected.update(grads[0], s_injected, params)
    u_switched, _ = switched.update(grads[0], s_switched, params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_switched), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7, err_msg="the learning rate set in the state")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_state_keeps_its_type_through_cond(name, dtype):
    with jax.enable_x64(dtype in ("float64", "complex128")):
        params, grads, tx = _cast(PARAMS, dtype), _cast(GRADS[0], dtype), make(name)
        state = _init_or_skip(tx, params)

        def update_or_not(pred, grads, state, params):
            updated = tx.update(grads, state, params)  # the updated state or the init state:
            return updated, jax.lax.cond(pred, lambda: updated, lambda: (jax.tree.map(jnp.zeros_like, grads), state))

        for updates, new in jax.eval_shape(update_or_not, True, grads, state, params):  # traced, not compiled
            assert _types(updates) == _types(grads) and _types(new) == _types(state)


# bfloat16: the chain names (a fused transform runs its chain in bfloat16)
MULTI_STEPS_CASES = [(n, "float32") for n in NAMES] + [(n, "bfloat16") for n in CHAIN_NAMES]


@pytest.mark.parametrize("name, dtype", MULTI_STEPS_CASES)
def test_multi_steps_gives_zero_updates_until_the_kth(name, dtype):
    tx = optax.MultiSteps(make(name), every_k_schedule=4)
    params = _cast({"w": PARAMS["w"]}, dtype)  # one leaf: MultiSteps' program is large to compile
    grads = _cast({"w": np.stack([g["w"] for g in GRADS * 2])}, dtype)  # two accumulations

    @jax.jit
    def run(params, grads):
        def body(state, g):
            u, state = tx.update(g, state, params)
            return state, u

        return jax.lax.scan(body, tx.init(params), grads)[1]

    updates = run(params, grads)
    for u in jax.tree.leaves(updates):
        assert u.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(u[:3], np.zeros_like(u[:3]))
        np.testing.assert_array_equal(u[4:7], np.zeros_like(u[4:7]))
    # the kth or the 2kth update moves (ADOPT's first step only sets its second moment, SOAP's builds its bases)
    assert any(np.any(np.asarray(u[3::4], np.float32) != 0) for u in jax.tree.leaves(updates))


def test_a_broken_optimizer_fails_the_convergence_property(monkeypatch):
    """The suite can fail: SGD that climbs (its sign flipped) does not reach the minima."""
    import optimizers

    monkeypatch.setitem(globals(), "make", lambda name, **kw: optax.chain(optimizers.sgd(2e-3, momentum=0.9),
                                                                           optax.scale(-1.0)))
    with pytest.raises(AssertionError):
        test_converges_without_recompiling_ignoring_unknown_keywords("sgd", jnp.float32)
