import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, check_reference, random_tree, run_params, run_params_f64, run_updates

from optimizers.rules.factored.sm3 import scale_by_sm3, sm3

# A large and a small matrix, a rank-3 tensor, a matrix with one row (one cover holds it all),
# a matrix whose first two rows are always zero (0/0 = 0), a vector and a scalar.
SHAPES = {"big": (130, 129), "small": (6, 5), "rank3": (2, 3, 4), "row": (1, 5), "zero_rows": (4, 3),
          "vec": (7,), "scalar": ()}


def _grads(steps=25, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    grads = [random_tree(rng, shapes, scale=[1.0, 0.1, 3.0][k % 3]) for k in range(steps)]
    for g in grads:
        if "zero_rows" in g:
            g["zero_rows"][:2] = 0.0
    return grads


def _covers(shape):
    """The paper's cover sets S_r as boolean masks: one per index of each dim; a scalar is one set."""
    if not shape:
        return [np.ones((), bool)]
    index = np.indices(shape)
    return [index[d] == i for d, n in enumerate(shape) for i in range(n)]


def _sm3_reference(grads, variant, eps):
    """Algorithm 1 (SM3-I) or 2 (SM3-II) over explicit covers, with 0/0 = 0."""
    covers = _covers(grads[0].shape)
    mu = np.zeros(len(covers))
    for g in grads:
        nu = np.full(g.shape, np.inf)
        if variant == "I":
            mu = mu + np.array([np.max(g[S] ** 2) for S in covers])
            for r, S in enumerate(covers):
                nu[S] = np.minimum(nu[S], mu[r])
        else:
            for r, S in enumerate(covers):
                nu[S] = np.minimum(nu[S], mu[r])
            nu = nu + g**2
            mu = np.array([np.max(nu[S]) for S in covers])
        yield np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu + eps, 1.0)), 0.0)


def _adagrad_reference(grads, eps=0.0):
    v = np.zeros_like(grads[0])
    for g in grads:
        v = v + g**2
        yield np.where(v > 0, g / np.sqrt(np.where(v > 0, v + eps, 1.0)), 0.0)


def _sm3_per_dim_reference(grads, variant, eps):
    """SM3-I/II with one accumulator per index of each dim (the explicit cover sets are too many
    masks for large leaves); a vector or scalar is AdaGrad."""
    shape = grads[0].shape
    if len(shape) < 2:
        yield from _adagrad_reference(grads, eps)
        return
    acc = [np.zeros(n) for n in shape]
    others = [tuple(a for a in range(len(shape)) if a != d) for d in range(len(shape))]
    spread = lambda d: np.expand_dims(acc[d], others[d])  # noqa: E731
    for g in grads:
        if variant == "I":
            acc = [a + np.max(g**2, axis=o, initial=0.0) for a, o in zip(acc, others)]
            nu = np.minimum.reduce(np.broadcast_arrays(*[spread(d) for d in range(len(shape))]))
        else:
            nu = np.minimum.reduce(np.broadcast_arrays(*[spread(d) for d in range(len(shape))])) + g**2
            acc = [np.max(nu, axis=o, initial=0.0) for o in others]
        yield np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu + eps, 1.0)), 0.0)


@pytest.mark.parametrize("variant", ["I", "II"])
def test_per_dim_reference_is_the_cover_sets_one(variant):
    """The per-dim form test_fused uses on large leaves is the paper's, cover set by cover set."""
    for name, shape in SHAPES.items():
        grads = [g[name] for g in _grads(6)]
        for a, b in zip(_sm3_per_dim_reference(grads, variant, 1e-3), _sm3_reference(grads, variant, 1e-3)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=name)


@pytest.mark.parametrize("variant,eps", [("I", 0.0), ("II", 0.0), ("I", 1e-3), ("II", 1e-3)])
def test_scale_by_sm3_matches_paper(variant, eps):
    grads = _grads()
    got = run_updates(scale_by_sm3(eps_root=eps, variant=variant), grads)
    check_reference(got, grads, lambda gs: _sm3_reference(gs, variant, eps))
    assert all(np.all(u["zero_rows"][:2] == 0) for u in got)


@pytest.mark.parametrize("variant", ["I", "II"])
def test_vectors_and_scalars_are_exact_adagrad(variant):
    grads = _grads(shapes={"vec": (7,), "scalar": (), "zero": (3,)})
    for g in grads:
        g["zero"][:] = 0.0
    check_reference(run_updates(scale_by_sm3(variant=variant), grads), grads, _adagrad_reference)


def test_variant_II_is_tighter_than_variant_I():
    """Paper, Proposition 3: nu'_t <= nu_t, so SM3-II's steps are at least SM3-I's."""
    grads = _grads(10, shapes={"m": (6, 5), "t": (2, 3, 4)})
    one, two = run_updates(scale_by_sm3(variant="I"), grads), run_updates(scale_by_sm3(variant="II"), grads)
    for a, b in itertools.islice(zip(one, two), 1, None):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert np.all(np.abs(y) >= np.abs(x) * (1 - 1e-6)) and not np.allclose(x, y)


def _sgd_reference(theta, grads, lr, momentum, variant):
    m = np.zeros_like(theta)
    for u in _sm3_reference(grads, variant, 0.0):
        m = momentum * m + (1 - momentum) * u if momentum else u
        theta = theta - lr * m
        yield theta


@pytest.mark.parametrize("momentum,variant", [(None, "I"), (0.9, "I"), (0.5, "II")])
def test_sm3_matches_paper(momentum, variant):
    grads, theta0 = _grads(seed=1), random_tree(np.random.default_rng(2), SHAPES)
    got = run_params(sm3(0.1, momentum, variant=variant), grads, theta0)
    check_reference(got, grads, lambda th, gs: _sgd_reference(th, gs, 0.1, momentum, variant), params=theta0)


OPTAX_SHAPES = {k: v for k, v in SHAPES.items() if k != "scalar"}  # optax.sm3 raises on a 0-d leaf


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_matches_optax_with_its_settings(momentum):
    grads, theta0 = _grads(50, seed=3, shapes=OPTAX_SHAPES), random_tree(np.random.default_rng(4), OPTAX_SHAPES)
    got = run_params_f64(sm3(1e-2, momentum, eps_root=1e-8, variant="II"), grads, theta0)
    want = run_params_f64(optax.sm3(1e-2, momentum=momentum or 0.0), grads, theta0)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_defaults_differ_from_optax_and_scalars_work_here():
    grads, theta0 = _grads(20, seed=5, shapes=OPTAX_SHAPES), random_tree(np.random.default_rng(6), OPTAX_SHAPES)
    ours = run_params_f64(sm3(1e-2), grads, theta0)[-1]
    theirs = run_params_f64(optax.sm3(1e-2), grads, theta0)[-1]
    assert not np.allclose(ours["small"], theirs["small"], rtol=1e-4)
    scalar = {"s": jnp.ones(())}
    with pytest.raises(IndexError):
        optax.sm3(1e-2).update(scalar, optax.sm3(1e-2).init(scalar))
    u, _ = sm3(1e-2).update(scalar, sm3(1e-2).init(scalar))
    np.testing.assert_allclose(u["s"], -1e-2)  # AdaGrad's first step: -lr * g / |g|


def test_memory_is_rows_plus_columns():
    params = {"w": jnp.zeros((1024, 512), jnp.float32)}
    for tx in [scale_by_sm3(), sm3(0.1), sm3(0.1, variant="II")]:
        assert sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0) == 1024 + 512
    assert sum(x.size for x in jax.tree.leaves(sm3(0.1, 0.9).init(params)) if x.ndim > 0) == 1024 + 512 + 1024 * 512
