"""Random pytrees and runners for the code under test (the references never use them)."""

import jax
import numpy as np
import optax

# Several leaves, several shapes, nested containers and a scalar leaf.
TREE_SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 2, 3), (5,)], "scale": ()}


def random_tree(rng: np.random.Generator, shapes=TREE_SHAPES, scale: float = 1.0):
    """A pytree of float64 NumPy arrays with ``shapes``' structure, N(0, scale^2) entries."""
    return jax.tree.map(lambda s: scale * rng.normal(size=s), shapes, is_leaf=lambda x: isinstance(x, tuple))


def random_grads(steps: int, seed: int = 0, scale: float = 1.0):
    """``steps`` random float64 gradient pytrees."""
    rng = np.random.default_rng(seed)
    return [random_tree(rng, scale=scale) for _ in range(steps)]


def leaves(tree):
    return jax.tree.leaves(tree)


def assert_close(got, want, rtol=2e-5):
    """float32 result against a float64 reference: ``rtol`` of the reference's largest magnitude.

    float32 has a 6e-8 unit roundoff; a handful of operations per step over tens of steps
    stays well inside 2e-5 of the values' scale.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def run_updates(tx, grads, params=None, dtype=np.float32):
    """The updates ``tx`` returns for each gradient tree, as float64 NumPy trees (jit-compiled).

    ``params`` stay fixed (the reference formulas take the same params at every step).
    """
    cast = lambda t: jax.tree.map(lambda x: np.asarray(x, dtype), t)  # noqa: E731
    params = cast(grads[0] if params is None else params)
    state, update = tx.init(params), jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(cast(g), state, params)
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
    return out


def run_params(tx, grads, params, dtype=np.float32, read=None):
    """The params after each step of ``tx`` with the given gradients (jit-compiled); with ``read``,
    ``read(params, state)`` after each step instead."""
    cast = lambda t: jax.tree.map(lambda x: np.asarray(x, dtype), t)  # noqa: E731
    params = cast(params)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for g in grads:
        params, state = step(params, state, cast(g))
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), params) if read is None else read(params, state))
    return out


def run_torch(make_optimizer, params, grads):
    """The params after each step of a ``torch.optim`` optimizer, in float64, as NumPy trees.

    ``make_optimizer(tensors)`` builds the optimizer over the leaves of ``params``.
    """
    import torch

    flat, treedef = jax.tree.flatten(params)
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in flat]
    opt = make_optimizer(tensors)
    out = []
    for g in grads:
        for t, gl in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(np.asarray(gl, np.float64))
        opt.step()
        out.append(jax.tree.unflatten(treedef, [t.detach().numpy().copy() for t in tensors]))
    return out


def run_params_f64(tx, grads, params):
    """:func:`run_params` with ``jax_enable_x64``: the whole step in float64."""
    with jax.enable_x64(True):
        return run_params(tx, grads, params, dtype=np.float64)


def assert_trees_close(got, want, rtol):
    """Every leaf of ``got`` within ``rtol`` of ``want`` (see :func:`assert_close`)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(g, w, rtol)


def check_reference(got, grads, reference, *, params=None, rtol=2e-5):
    """Compares each step of ``got`` (a list of trees) with a per-leaf float64 reference.

    ``reference(leaf_grads)`` (or ``reference(leaf_params, leaf_grads)`` when ``params`` is
    given) yields the expected value of that leaf at each step.
    """
    seqs = list(zip(*[jax.tree.leaves(g) for g in grads]))
    starts = jax.tree.leaves(params) if params is not None else [None] * len(seqs)
    assert len(jax.tree.leaves(got[0])) == len(seqs)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        want = list(reference(list(seq)) if params is None else reference(start, list(seq)))
        assert len(want) == len(got)
        for step, w in enumerate(want):
            assert_close(jax.tree.leaves(got[step])[i], w, rtol)




def jit_traced_once(fn, **jit_kwargs):
    """``jax.jit(fn)`` that raises ``AssertionError`` if it is ever traced a second time: a state leaf
    whose dtype, shape or weak type changes between steps would retrace it. (A counter of this one
    function object: chex's ``assert_max_traces`` counts by code, so a step defined inside a test
    is counted across tests.)"""
    traces = []

    def counted(*args, **kwargs):
        traces.append(1)
        assert len(traces) == 1, f"{getattr(fn, '__name__', fn)} traced {len(traces)} times: it recompiles"
        return fn(*args, **kwargs)

    return jax.jit(counted, **jit_kwargs)


def estimates_beside_torch(tx, ref, tensors, theta0, grads, key="d"):
    """Runs ``tx`` (float64, jit-compiled) and the torch optimizer ``ref`` over ``tensors`` (the leaves of
    ``theta0``) on the same gradients; yields ``(ours, torch's)`` estimate ``key`` after every step
    (ours read with ``optimizers.get_hyperparams``, torch's from ``ref.param_groups[0]``)."""
    import optimizers
    import torch

    with jax.enable_x64(True):
        params = jax.tree.map(np.asarray, theta0)
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in grads:
            u, state = step(g, state, params)
            params = optax.apply_updates(params, u)
            for t, gl in zip(tensors, jax.tree.leaves(g)):
                t.grad = torch.tensor(np.asarray(gl, np.float64))
            ref.step()
            yield float(optimizers.get_hyperparams(state)[key]), ref.param_groups[0][key]
