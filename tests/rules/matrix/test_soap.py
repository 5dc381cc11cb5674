"""SOAP: a float64 NumPy transcription of the authors' soap.py, pytorch_optimizer's SOAP (float64 torch),
stacked layers against unrolled ones, apply_if_finite, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, run_params, run_params_f64, run_torch
from pytorch_optimizer import SOAP

import optimizers

SHAPES = {"tall": (6, 4), "wide": (3, 7), "square": (5, 5), "cube": (2, 3, 4), "vec": (5,)}


# ------------------------------------------------------------------ float64 NumPy reference


def _merge(shape, max_dim):
    out, cur = [], 1
    for d in shape:
        if cur * d > max_dim:
            if cur > 1:
                out.append(cur)
                cur = d
            else:
                out.append(d)
                cur = 1
        else:
            cur *= d
    if cur > 1 or not out:
        out.append(cur)
    return out


def _project(x, qs, back=False):
    for q in qs:
        if q is None:
            x = np.transpose(x, list(range(1, x.ndim)) + [0])
        else:
            x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
    return x


def _soap_reference(params, grads, lr, b1, b2, sb, eps, wd, f, max_dim, merge, p1d, normalize, correct, decayed):
    """The authors' SOAP step by step on each leaf (float64); yields the params after each step."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    st = {}
    for n, grad in enumerate(grads):
        for k in p:
            g = np.asarray(grad[k], np.float64)
            shape = g.shape

            def shaped(x):
                return x.reshape(_merge(shape, max_dim)) if merge and g.ndim > 1 else x

            if k not in st:  # the first step: statistics and bases only
                dims = [shape[0]] if g.ndim == 1 else list(shaped(g).shape)
                on = [p1d and shape[0] <= max_dim] if g.ndim == 1 else [d <= max_dim for d in dims]
                st[k] = dict(m=np.zeros(shape), v=np.zeros(shape), step=0,
                             GG=[np.zeros((d, d)) if o else None for d, o in zip(dims, on)], Q=None)
            s = st[k]
            if n > 0:
                s["step"] += 1
                t = s["step"]
                gp = _project(shaped(g), s["Q"]).reshape(shape)
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * gp**2
                mp = _project(shaped(s["m"]), s["Q"])
                nrm = _project(mp / (np.sqrt(shaped(s["v"])) + eps), s["Q"], back=True).reshape(shape)
                if normalize:
                    nrm = nrm / (1e-30 + np.sqrt(np.mean(nrm**2)))
                step = lr * (np.sqrt(1 - b2**t) / (1 - b1**t) if correct else 1.0)
                p[k] = p[k] - step * nrm
                if decayed[k]:
                    p[k] = p[k] * (1 - lr * wd)
            gm = shaped(g)
            for i, G in enumerate(s["GG"]):
                if G is not None:
                    others = [a for a in range(gm.ndim) if a != i]
                    s["GG"][i] = sb * G + (1 - sb) * np.tensordot(gm, gm, axes=(others, others))
            if s["Q"] is None:
                s["Q"] = [None if G is None else np.linalg.eigh(G)[1][:, ::-1] for G in s["GG"]]
            elif s["step"] > 0 and s["step"] % f == 0:
                v = shaped(s["v"])
                for i, (G, Q) in enumerate(zip(s["GG"], s["Q"])):
                    if G is None:
                        continue
                    order = np.argsort(-np.diag(Q.T @ G @ Q), kind="stable")
                    v = np.take(v, order, axis=i)
                    s["Q"][i] = np.linalg.qr(G @ Q[:, order])[0]
                s["v"] = v.reshape(shape)
        yield {k: x.copy() for k, x in p.items()}


def _data(steps=21, seed=0, shapes=SHAPES, zero=("tall", "wide", "vec")):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(steps)]
    for k in zero:  # GGᵀ of one non-square G is singular: its null space has no defined eigenbasis (LAPACK's
        if k in grads[0]:  # choice decides); from a zero statistic every eigh gives the (flipped) identity
            grads[0][k] = 0 * grads[0][k]
    return params, grads


CASES = {  # keywords of soap; both sides of every branch
    "defaults_f3": dict(precondition_frequency=3),
    "1d_nobias_wd_mask": dict(precondition_frequency=4, precondition_1d=True, correct_bias=False, weight_decay=0.1,
                              mask={k: k != "vec" for k in SHAPES}),
    "merge_max6": dict(precondition_frequency=5, merge_dims=True, max_precond_dim=6, shampoo_beta=0.9),
    "max5_normalize": dict(precondition_frequency=3, max_precond_dim=5, normalize_grads=True, b1=0.9, b2=0.99),
}


def _reference_kwargs(kw):
    mask = kw.get("mask")
    return dict(lr=0.01, b1=kw.get("b1", 0.95), b2=kw.get("b2", 0.95),
                sb=kw.get("shampoo_beta", kw.get("b2", 0.95)), eps=1e-8, wd=kw.get("weight_decay", 0.0),
                f=kw["precondition_frequency"], max_dim=kw.get("max_precond_dim", 10000),
                merge=kw.get("merge_dims", False), p1d=kw.get("precondition_1d", False),
                normalize=kw.get("normalize_grads", False), correct=kw.get("correct_bias", True),
                decayed={k: True if mask is None else mask[k] for k in SHAPES})


@pytest.mark.parametrize("case", sorted(CASES))
def test_soap_matches_the_authors_algorithm(case):
    kw = CASES[case]
    params, grads = _data(zero=("tall", "wide", "vec", "cube") if kw.get("merge_dims") else ("tall", "wide", "vec"))
    tx = optimizers.soap(0.01, **{"weight_decay": 0.0, **kw})
    got = run_params(tx, grads, params)
    want = list(_soap_reference(params, grads, **_reference_kwargs(kw)))
    for g, w, p0 in zip(got, want, [params] + want[:-1]):
        for k in SHAPES:  # the change of the params: float32 against float64, after up to 20 refreshes' drift
            assert_close(g[k], w[k], rtol=2e-5)
            step = np.max(np.abs(w[k] - p0[k]))
            assert np.max(np.abs((g[k] - p0[k]) - (w[k] - p0[k]))) <= 2e-3 * step + 2e-6


def test_soap_first_call_leaves_params_and_moments():
    params, grads = _data(steps=1)
    tx = optimizers.soap(0.01, weight_decay=0.5)
    state = tx.init(jax.tree.map(jnp.float32, params))
    u, state = jax.jit(tx.update)(jax.tree.map(jnp.float32, grads[0]), state, jax.tree.map(jnp.float32, params))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves((state[0].mu, state[0].nu)))
    basis = np.asarray(state[0].bases[0]["tall"])  # the eigenvectors of (1-b2) G Gᵀ, decreasing
    stat = np.asarray(state[0].stats[0]["tall"], np.float64)
    np.testing.assert_allclose(stat, 0.05 * grads[0]["tall"] @ grads[0]["tall"].T, rtol=1e-5, atol=1e-6)
    evals = np.diag(basis.T @ stat @ basis)
    np.testing.assert_allclose(evals, np.sort(np.linalg.eigvalsh(stat))[::-1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ pytorch_optimizer's SOAP


TORCH_CASES = {  # the options where pytorch_optimizer 4.1.0 computes the authors' update
    "defaults_f3_wd": dict(precondition_frequency=3, weight_decay=0.05),
    "1d_max5_nobias": dict(precondition_frequency=4, precondition_1d=True, max_precond_dim=5, correct_bias=False,
                           weight_decay=0.0),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_soap_matches_pytorch_optimizer(case):
    kw = TORCH_CASES[case]
    params, grads = _data(seed=1)
    torch_names = dict(max_precond_dim="max_precondition_dim")

    def make(tensors):
        return SOAP(tensors, lr=0.01, **{torch_names.get(k, k): v for k, v in kw.items()})

    want = run_torch(make, params, grads)
    got64 = run_params_f64(optimizers.soap(0.01, **kw), grads, params)
    got32 = run_params(optimizers.soap(0.01, **kw), grads, params)
    for g64, g32, w in zip(got64, got32, want):
        for k in SHAPES:
            assert_close(g64[k], w[k], rtol=1e-6)  # float64 on both sides but its QR (cast to float32)
            assert_close(g32[k], w[k], rtol=2e-5)


# ------------------------------------------------------------------ layers, non-finite, errors


@pytest.mark.parametrize("layers", [1, 3])
def test_soap_stacked_equals_unrolled(layers):
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(layers, 4, 3))
    grads = [rng.normal(size=(layers, 4, 3)) for _ in range(7)]
    grads[0] = 0 * grads[0]  # no singular first statistic (see _data)
    kw = dict(precondition_frequency=2, weight_decay=0.1)
    got = run_params(optimizers.soap(0.01, layer_axes=1, **kw), [{"w": g} for g in grads], {"w": stack})
    want = run_params(optimizers.soap(0.01, **kw), [{f"w{i}": g[i] for i in range(layers)} for g in grads],
                      {f"w{i}": stack[i] for i in range(layers)})
    for a, b in zip(got, want):
        for i in range(layers):
            np.testing.assert_allclose(a["w"][i], b[f"w{i}"], rtol=1e-6, atol=1e-7)


def test_soap_nonfinite_preconditioner_is_reported_nonfinite_gradient_skipped():
    params = {"w": jnp.ones((3, 2), jnp.float32)}
    small = {"w": jnp.full((3, 2), 0.1, jnp.float32)}
    huge = {"w": jnp.full((3, 2), 1e25, jnp.float32)}  # G Gᵀ overflows float32; G itself is finite
    bare = optimizers.soap(0.01, precondition_frequency=1)
    s = bare.init(params)
    for g in (small, small, huge):
        u, s = bare.update(g, s, params)
    assert not bool(s[0].finite["w"]) and np.isnan(np.asarray(u["w"])).all()
    # apply_if_finite (ours and optax's) tests the gradients: a non-finite one is skipped, the state kept finite
    tx = optimizers.apply_if_finite(optimizers.soap(0.01, precondition_frequency=1), max_consecutive_skips=5)
    s = tx.init(params)
    for g in (small, small):
        u, s = tx.update(g, s, params)
    p = optax.apply_updates(params, u)
    u, s = tx.update({"w": jnp.full((3, 2), jnp.inf, jnp.float32)}, s, p)
    assert np.all(np.asarray(optax.apply_updates(p, u)["w"]) == np.asarray(p["w"]))
    assert int(s.total_skips) == 1 and bool(s.inner_state[0].finite["w"])
    assert np.isfinite(np.asarray(s.inner_state[0].stats[0]["w"])).all()


@pytest.mark.parametrize("kw, name", [
    (dict(precondition_frequency=0), "precondition_frequency"),
    (dict(max_precond_dim=0), "max_precond_dim"),
    (dict(b2=1.0), "b2"),
    (dict(shampoo_beta=1.0), "shampoo_beta"),
    (dict(b1=-0.1), "b1"),
])
def test_soap_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        optimizers.soap(0.01, **kw)


def test_soap_refreshes_compile_once():
    params, grads = _data(steps=6)
    tx = optimizers.scale_by_soap(precondition_frequency=2)
    traces = []

    def update(g, s):
        traces.append(1)
        return tx.update(g, s)

    step = jax.jit(update)
    s = tx.init(jax.tree.map(jnp.float32, params))
    for g in grads:
        _, s = step(jax.tree.map(jnp.float32, g), s)
    assert len(traces) == 1


def test_soap_stack_sharded_on_its_layer_axis_needs_no_collective():
    """8 layers on 8 CPU devices (tests/conftest.py): state_shardings puts each layer's statistics, bases and
    moments with its layer, and the compiled step (refreshes included) moves nothing between devices."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from optimizers.sharding import state_shardings

    mesh = Mesh(np.array(jax.devices()[:8]), ("layers",))
    params = {"w": jnp.ones((8, 8, 4), jnp.float32)}  # a row axis as long as the layer axis
    p_sh = {"w": NamedSharding(mesh, PartitionSpec("layers"))}
    tx = optimizers.soap(0.01, layer_axes=1, precondition_frequency=2)
    s_sh = state_shardings(tx, params, p_sh)
    inner = s_sh[0]
    for tree in (inner.mu, inner.nu, inner.stats[0], inner.stats[1], inner.bases[0], inner.bases[1], inner.finite):
        assert tuple(tree["w"].spec)[:1] == ("layers",), tree["w"].spec

    def step(g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    hlo = jax.jit(step, in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh)).lower(
        params, jax.eval_shape(tx.init, params), params).compile().as_text()
    for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
        assert op not in hlo, op
