"""Shampoo: a float64 NumPy transcription of Gupta et al. 2018 with Anil et al. 2020's options,
pytorch_optimizer's Shampoo (float64 torch) where it computes the same, stacked layers against unrolled
ones, non-finite statistics, and the errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, run_params, run_params_f64, run_torch
from pytorch_optimizer import Shampoo

import optimizers

SHAPES = {"tall": (6, 4), "wide": (3, 7), "square": (5, 5), "cube": (2, 3, 4), "vec": (5,), "scalar": ()}


# ------------------------------------------------------------------ float64 NumPy reference


def _root(s, p):
    """S^{-1/p} by eigh, the eigenvalues floored at 1e-6 of the largest (the documented floor)."""
    w, v = np.linalg.eigh(s)
    w = np.maximum(w, 1e-6 * w.max())
    return (v * w ** (-1.0 / p)) @ v.T


def _graft(g, nu, kind, gb2, geps, t):
    if kind in (None, "sgd"):
        return g, nu
    if kind == "adagrad":
        nu = nu + g**2
        return g / (np.sqrt(nu) + geps), nu
    nu = gb2 * nu + (1 - gb2) * g**2
    if kind == "adam":
        return g / (np.sqrt(nu / (1 - gb2**t)) + geps), nu
    return g / (np.sqrt(nu) + geps), nu


def _blocks(shape, block_size):
    """The slices of every block of a leaf: each axis cut into pieces of ``block_size`` (the last shorter)."""
    per_axis = [[slice(a, min(a + (block_size or d), d)) for a in range(0, d, block_size or d)] or [slice(0, 0)]
                for d in shape]
    return list(itertools.product(*per_axis))


def _shampoo_reference(params, grads, lr, b1, b2, eps, wd, f, start, max_dim, block, grafting, gb2, geps, decayed):
    """Shampoo on each leaf (float64), written from the papers' equations; yields the params after each step.
    Each block of a leaf (the whole leaf without ``block``) has its own statistics, roots and grafting norm."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    st = {}
    for k, x in p.items():
        blocks = _blocks(np.shape(x), block)
        st[k] = dict(blocks=blocks, m=np.zeros(np.shape(x)), nu=np.zeros(np.shape(x)),
                     S=[[eps * np.eye(b.stop - b.start) if 0 < d <= max_dim else None for b, d in zip(bl, np.shape(x))]
                        for bl in blocks],
                     R=[[None] * np.ndim(x) for _ in blocks])
    for t, grad in enumerate(grads, start=1):
        for k in p:
            g, s = np.asarray(grad[k], np.float64), st[k]
            order = g.ndim
            a, s["nu"] = _graft(g, s["nu"], grafting, gb2, geps, t)
            d = np.zeros_like(g)
            for j, bl in enumerate(s["blocks"]):
                gb = g[bl]
                for i, S in enumerate(s["S"][j]):
                    if S is not None:
                        unfolded = np.moveaxis(gb, i, 0).reshape(gb.shape[i], -1)
                        s["S"][j][i] = b2 * S + (1.0 if b2 == 1 else 1 - b2) * unfolded @ unfolded.T
                        if (t - 1) % f == 0:
                            s["R"][j][i] = _root(s["S"][j][i], 2 * order)
                pre = gb
                for i, R in enumerate(s["R"][j]):
                    if R is not None:
                        pre = np.moveaxis(np.tensordot(R, np.moveaxis(pre, i, 0), axes=1), 0, i)
                if grafting is not None:
                    pre = pre * np.linalg.norm(a[bl]) / np.linalg.norm(pre)
                d[bl] = pre if t - 1 >= start else a[bl]
            s["m"] = b1 * s["m"] + d
            p[k] = p[k] - lr * (s["m"] + (wd * p[k] if decayed[k] else 0))
        yield {k: x.copy() for k, x in p.items()}


def _data(steps=21, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(steps)]
    return params, grads


CASES = {  # keywords of shampoo; both sides of every branch
    "paper": dict(),
    "f3_adam_b1_ema": dict(precondition_frequency=3, grafting="adam", b1=0.9, b2=0.95, eps=1e-4),
    "f4_start5_none_wd": dict(precondition_frequency=4, start_preconditioning_step=5, b2=0.99, weight_decay=0.1,
                              mask={k: k != "vec" for k in SHAPES}),
    "max5_adagrad_start2": dict(precondition_frequency=2, max_preconditioner_dim=5, grafting="adagrad",
                                start_preconditioning_step=2, eps=1e-3),
    "rmsprop_sgd_b1": dict(precondition_frequency=5, grafting="rmsprop", graft_b2=0.9, b1=0.5),
    "sgd_graft": dict(precondition_frequency=2, grafting="sgd", b2=0.9, eps=1e-2),
    "blocks3_adam": dict(precondition_frequency=2, block_size=3, grafting="adam", b2=0.99, eps=1e-3),
    # no grafting and stale roots: a new gradient's component along a statistic's εI directions is multiplied by
    # ε^(-1/2k), and with it float32 eigh's error (~1e-7 λ_max): ε=1e-3 gives ~3e-3 of the step on the vector
    "blocks4_none_max5": dict(precondition_frequency=3, block_size=4, max_preconditioner_dim=5, eps=1e-2),
}


def _reference_kwargs(kw):
    mask = kw.get("mask")
    return dict(lr=0.01, b1=kw.get("b1", 0.0), b2=kw.get("b2", 1.0), eps=kw.get("eps", 1e-6),
                wd=kw.get("weight_decay", 0.0), f=kw.get("precondition_frequency", 1),
                start=kw.get("start_preconditioning_step", 0), max_dim=kw.get("max_preconditioner_dim", 8192),
                block=kw.get("block_size"),
                grafting=kw.get("grafting"), gb2=kw.get("graft_b2", 0.999), geps=kw.get("graft_eps", 1e-8),
                decayed={k: True if mask is None else mask[k] for k in SHAPES})


@pytest.mark.parametrize("case", sorted(CASES))
def test_shampoo_matches_the_papers_algorithm(case):
    kw = CASES[case]
    params, grads = _data()
    got = run_params(optimizers.shampoo(0.01, **kw), grads, params)
    want = list(_shampoo_reference(params, grads, **_reference_kwargs(kw)))
    for g, w, p0 in zip(got, want, [params] + want[:-1]):
        for k in SHAPES:  # the change of the params: float32 roots (eigh) against float64, after 20 steps' drift
            assert_close(g[k], w[k], rtol=2e-5)
            step = np.max(np.abs(w[k] - p0[k]))
            assert np.max(np.abs((g[k] - p0[k]) - (w[k] - p0[k]))) <= 2e-3 * step + 2e-6, k


def test_shampoo_refreshes_roots_every_f_steps_only():
    """Between refreshes the stored roots are kept (and are those of an older statistic)."""
    params, grads = _data(steps=3)
    tx = optimizers.scale_by_shampoo(precondition_frequency=2)
    step = jax.jit(tx.update)
    s = tx.init(jax.tree.map(jnp.float32, params))
    roots = []
    for g in grads:
        _, s = step(jax.tree.map(jnp.float32, g), s)
        roots.append(np.asarray(s.roots[0]["tall"]))
        stat = np.asarray(s.stats[0]["tall"], np.float64)
        if len(roots) != 2:  # refreshed at counts 0 and 2: the root of the current statistic
            assert_close(roots[-1], _root(stat, 4), rtol=1e-4)
        else:
            np.testing.assert_array_equal(roots[1], roots[0])
            assert not np.allclose(roots[1], _root(stat, 4), rtol=1e-3)


# ------------------------------------------------------------------ pytorch_optimizer's Shampoo


def test_shampoo_matches_pytorch_optimizer():
    """pytorch_optimizer 4.1.0's Shampoo is the paper's (sums from matrix_eps·I, roots every step) with
    momentum=0 and preconditioning_compute_steps=1; its roots are by SVD without a floor."""
    shapes = {k: v for k, v in SHAPES.items() if k != "scalar"}  # torch's Shampoo has no 0-d rule
    params, grads = _data(seed=1, shapes=shapes)

    def make(tensors):
        return Shampoo(tensors, lr=0.01, matrix_eps=1e-3)

    want = run_torch(make, params, grads)
    got64 = run_params_f64(optimizers.shampoo(0.01, eps=1e-3), grads, params)
    got32 = run_params(optimizers.shampoo(0.01, eps=1e-3), grads, params)
    for g64, g32, w in zip(got64, got32, want):
        for k in shapes:
            assert_close(g64[k], w[k], rtol=1e-6)  # float64 on both sides (eigh against SVD)
            assert_close(g32[k], w[k], rtol=2e-5)


# ------------------------------------------------------------------ layers, non-finite, errors


@pytest.mark.parametrize("layers", [1, 3])
def test_shampoo_stacked_equals_unrolled(layers):
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(layers, 4, 3))
    grads = [rng.normal(size=(layers, 4, 3)) for _ in range(7)]
    kw = dict(precondition_frequency=2, weight_decay=0.1, grafting="adam", b1=0.9, start_preconditioning_step=1,
              block_size=2)  # blocks of 2 and 1 along the axis of 3
    got = run_params(optimizers.shampoo(0.01, layer_axes=1, **kw), [{"w": g} for g in grads], {"w": stack})
    want = run_params(optimizers.shampoo(0.01, **kw), [{f"w{i}": g[i] for i in range(layers)} for g in grads],
                      {f"w{i}": stack[i] for i in range(layers)})
    for a, b in zip(got, want):
        for i in range(layers):
            np.testing.assert_allclose(a["w"][i], b[f"w{i}"], rtol=1e-6, atol=1e-7)


def test_shampoo_nonfinite_statistic_is_reported():
    params = {"w": jnp.ones((3, 2), jnp.float32)}
    tx = optimizers.shampoo(0.01)
    s = tx.init(params)
    u, s = tx.update({"w": jnp.full((3, 2), 0.1, jnp.float32)}, s, params)
    assert bool(s[0].finite["w"]) and np.isfinite(np.asarray(u["w"])).all()
    u, s = tx.update({"w": jnp.full((3, 2), 1e25, jnp.float32)}, s, params)  # G Gᵀ overflows float32
    assert not bool(s[0].finite["w"]) and np.isnan(np.asarray(u["w"])).all()


@pytest.mark.parametrize("kw, name", [
    (dict(precondition_frequency=0), "precondition_frequency"),
    (dict(precondition_frequency=-2), "precondition_frequency"),
    (dict(max_preconditioner_dim=0), "max_preconditioner_dim"),
    (dict(block_size=0), "block_size"),
    (dict(block_size=-3), "block_size"),
    (dict(start_preconditioning_step=-1), "start_preconditioning_step"),
    (dict(b2=0.0), "b2"),
    (dict(b2=1.5), "b2"),
    (dict(b1=1.0), "b1"),
    (dict(eps=0.0), "eps"),
    (dict(grafting="adamw"), "grafting"),
])
def test_shampoo_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        optimizers.shampoo(0.01, **kw)
