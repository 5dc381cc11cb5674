"""NorMuon (``normuon``, ``scale_by_muon(normalization="neuron")``): a float64 NumPy transcription of the
authors' ``normuon_update`` written on PyTorch ``(out, in)`` weights, stacked layers, the state, the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers

JORDAN = (3.4445, -4.7750, 2.0315)


def _ns(w):
    """Jordan's Newton–Schulz in float64 on an (out, in) matrix: normalize, iterate on the wide side."""
    x = w.T if w.shape[0] > w.shape[1] else w
    x = x / (np.linalg.norm(x) + 1e-7)
    for a, b, c in [JORDAN] * 5:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if w.shape[0] > w.shape[1] else x


def _normuon_update(g, B, V, mu, mu2, nesterov):
    """One weight (out, in): momentum, NS, per-row second moment, norm-restoring rescale, shape scale.
    ``B`` (out, in) and ``V`` (out, 1) are updated in place."""
    B[...] = mu * B + (1 - mu) * g
    d = (1 - mu) * g + mu * B if nesterov else B.copy()
    o = _ns(d)
    before = np.linalg.norm(o)
    V[...] = mu2 * V + (1 - mu2) * np.mean(o * o, axis=1, keepdims=True)  # one per output neuron (row)
    o = o / (np.sqrt(V) + 1e-10)
    o = o * before / (np.linalg.norm(o) + 1e-10)
    return o * np.sqrt(max(1.0, o.shape[0] / o.shape[1]))


def _reference(params, grads, lr, mu, mu2, wd, nesterov, layers):
    """Our kernels are (in, out) with ``layers`` leading layer axes: each layer's transpose is the torch weight."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    flat = {k: v.reshape((-1,) + v.shape[-2:]) for k, v in p.items()}
    B = {k: np.zeros(v.shape[:1] + v.shape[:0:-1]) for k, v in flat.items()}  # (layers, out, in)
    V = {k: np.zeros(v.shape[:1] + (v.shape[2], 1)) for k, v in flat.items()}
    for g in grads:
        for k in p:
            w = p[k].reshape(flat[k].shape)
            gk = g[k].astype(np.float64).reshape(w.shape)
            for i in range(w.shape[0]):
                u = _normuon_update(gk[i].T, B[k][i], V[k][i], mu, mu2, nesterov)
                w[i] = w[i] * (1 - lr * wd) - lr * u.T
            p[k] = w.reshape(p[k].shape)
        yield dict(p)


SHAPES = {"tall": (7, 3), "wide": (3, 6), "square": (4, 4), "stack": (3, 5, 2)}
LAYERS = {"tall": 0, "wide": 0, "square": 0, "stack": 1}


def _run(tx, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g in grads:
        params, state = step(params, state, g)
        yield params, state


def _data(seed, steps):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    # gradients of varying scale per output neuron, so the per-neuron normalization matters
    scale = {k: np.exp(rng.normal(size=s[-1:])).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: (rng.normal(size=s) * scale[k]).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("nesterov, beta2", [(True, 0.95), (False, 0.6)])
def test_matches_the_reference_code(nesterov, beta2):
    params, grads = _data(0, 24)
    lr, wd = 0.02, 0.1
    tx = optimizers.normuon(lr, beta=0.9, weight_decay=wd, nesterov=nesterov, beta2=beta2,
                         layer_axes=LAYERS)
    want = _reference(params, grads, lr, 0.9, beta2, wd, nesterov, {"stack": 1})
    for (got, _), ref in zip(_run(tx, params, grads), want):
        for k in SHAPES:  # float32 vs float64: the NS iteration's rounding, a few ulps of lr * O(1) per step
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=5e-6, err_msg=k)


def test_the_normalization_changes_the_update_and_keeps_its_norm():
    """Against plain Muon: different updates (a test that can fail), the same Frobenius norm per matrix."""
    params, grads = _data(1, 3)
    plain = optimizers.scale_by_muon(beta=0.9, layer_axes=LAYERS)
    norm = optimizers.scale_by_muon(beta=0.9, layer_axes=LAYERS, normalization="neuron")
    p = jax.tree.map(jnp.asarray, params)
    s1, s2 = plain.init(p), norm.init(p)
    for g in grads:
        u1, s1 = jax.jit(plain.update)(g, s1, p)
        u2, s2 = jax.jit(norm.update)(g, s2, p)
    for k in SHAPES:
        assert not np.allclose(u1[k], u2[k], atol=1e-3), k
        n1 = np.linalg.norm(np.asarray(u1[k]).reshape((-1,) + SHAPES[k][-2:]), axis=(-2, -1))
        n2 = np.linalg.norm(np.asarray(u2[k]).reshape((-1,) + SHAPES[k][-2:]), axis=(-2, -1))
        np.testing.assert_allclose(n2, n1, rtol=1e-5, err_msg=k)


def test_state_is_per_layer_per_output_neuron_and_nonnegative():
    params, grads = _data(2, 2)
    tx = optimizers.normuon(0.01, layer_axes=LAYERS)
    *_, (_, state) = _run(tx, params, grads)
    nu = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optimizers.ScaleByMuonState))
    nu = [s.nu for s in nu if isinstance(s, optimizers.ScaleByMuonState)][0]
    for k, shape in SHAPES.items():
        want = (3, 1, 2) if k == "stack" else (1, shape[-1])
        assert nu[k].shape == want, k
        assert np.all(np.asarray(nu[k]) >= 0) and np.any(np.asarray(nu[k]) > 0), k
    from optimizers.contract.registry import nonnegative_fields
    assert "nu" in nonnegative_fields()[optimizers.ScaleByMuonState]


def test_beta2_schedule_is_in_the_state():
    tx = optimizers.scale_by_muon(normalization="neuron", beta2=optax.linear_schedule(0.5, 0.9, 10))
    state = tx.init({"w": jnp.ones((3, 4))})
    assert "beta2" in state.hyperparams
    assert "beta2" not in optimizers.scale_by_muon().init({"w": jnp.ones((3, 4))}).hyperparams


@pytest.mark.parametrize("fn, kwargs, match", [
    (optimizers.scale_by_muon, dict(normalization="row"), "scale_by_muon: normalization"),
    (optimizers.scale_by_muon, dict(normalization="neuron", beta2=1.0), "beta2"),
    (optimizers.scale_by_muon, dict(normalization="neuron", adaptive=True), "adaptive"),
    (optimizers.normuon, dict(learning_rate=0.01, beta2=1.0), "normuon: beta2"),
    (optimizers.normuon, dict(learning_rate=0.01, beta2=-0.1), "normuon: beta2"),
    (optimizers.normuon, dict(learning_rate=0.01, adaptive=True), "adaptive"),
    (optimizers.normuon, dict(learning_rate=0.01, adjust_lr="x"), "normuon: adjust_lr"),
])
def test_bad_arguments_raise(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


def test_normuon_is_muon_with_the_neuron_normalization_in_both_forms():
    params, grads = _data(3, 4)
    for form in ("reference", "optax"):
        a = optimizers.normuon(0.02, form=form, beta2=0.9, consistent_rms=0.2, layer_axes=LAYERS)
        b = optax.chain(optimizers.scale_by_muon(form=form, beta2=0.9, normalization="neuron", layer_axes=LAYERS,
                                                 eps=1e-7 if form == "reference" else 1e-8))
        p = jax.tree.map(jnp.asarray, params)
        sa, sb = a.init(p), b.init(p)
        for g in grads:
            ua, sa = jax.jit(a.update)(g, sa, p)
            ub, sb = jax.jit(b.update)(g, sb, p)
            for k, shape in SHAPES.items():
                s = 0.2 * np.sqrt(max(shape[-2:]))  # consistent_rms: the paper's RMS 0.2 scale
                np.testing.assert_allclose(ua[k], -0.02 * s * np.asarray(ub[k]), rtol=2e-6, atol=1e-7, err_msg=k)
