"""Muon: a float64 NumPy transcription of the reference update, torch.optim.Muon, optax.contrib.muon,
stacked layers against unrolled ones, Polar Express's Algorithm 1, and the errors."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import torch
import torch.optim._muon as torch_muon
from optax.contrib import MuonDimensionNumbers as DN

import optimizers

JORDAN = (3.4445, -4.7750, 2.0315)


# ------------------------------------------------------------------ float64 NumPy references


def _ns_reference(g, schedule, eps, factor=1.0):
    """Jordan's zeropower_via_newtonschulz5 in float64: normalize, iterate on the wide side."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) * factor + eps)
    for a, b, c in schedule:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def _muon_reference(params, grads, lr, mu, wd, nesterov, rms, layer_axes, adam):
    """The reference form, step by step: Muon on kernels (d_in, d_out) (each layer of a stack on its
    own), AdamW (b1, b2, eps, decoupled decay) on the rest. Yields the params after each step."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    B = {k: np.zeros_like(v) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, aeps, awd = adam
    for t, g in enumerate(grads, start=1):
        for k in p:
            gk = g[k].astype(np.float64)
            k_layers = layer_axes.get(k, 0)
            if p[k].ndim - k_layers == 2:
                B[k] = mu * B[k] + (1 - mu) * gk
                d = (1 - mu) * gk + mu * B[k] if nesterov else B[k]
                mats = d.reshape((-1,) + d.shape[-2:])
                o = np.stack([_ns_reference(x, [JORDAN] * 5, 1e-7) for x in mats]).reshape(d.shape)
                fan_in, fan_out = d.shape[-2:]
                s = np.sqrt(max(1, fan_out / fan_in)) if rms is None else rms * np.sqrt(max(fan_in, fan_out))
                p[k] = p[k] * (1 - lr * wd) - lr * s * o
            else:
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk**2
                mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
                p[k] = p[k] * (1 - lr * awd) - lr * mhat / (np.sqrt(vhat) + aeps)
        yield dict(p)


def _random(shapes, seed, steps):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]
    return params, grads


def _run(tx, params, grads):
    """The params after each step: one jit-compiled update, called ``len(grads)`` times."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g in grads:
        params, state = step(params, state, g)
        yield params


SHAPES = {"tall": (6, 3), "wide": (3, 5), "square": (4, 4), "stack": (3, 4, 2), "bias": (5,)}


@pytest.mark.parametrize("nesterov, rms", [(True, None), (False, 0.2)])
def test_matches_the_reference_update(nesterov, rms):
    params, grads = _random(SHAPES, 0, 10)
    lr, wd = 0.02, 0.1
    tx = optimizers.muon(lr, beta=0.9, weight_decay=wd, nesterov=nesterov, consistent_rms=rms,
                         layer_axes={"tall": 0, "wide": 0, "square": 0, "stack": 1, "bias": 0},
                         adam_b1=0.8, adam_b2=0.99, adam_weight_decay=0.05)
    want = _muon_reference(params, grads, lr, 0.9, wd, nesterov, rms, {"stack": 1}, (0.8, 0.99, 1e-8, 0.05))
    for got, ref in zip(_run(tx, params, grads), want):
        for k in SHAPES:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=2e-6, err_msg=k)  # float32 vs float64


# ------------------------------------------------------------------ torch.optim.Muon, float64


def _torch_ns_in_its_dtype():
    """torch's own _zeropower_via_newtonschulz with its bfloat16 cast removed (the iteration in float64)."""
    src = inspect.getsource(torch_muon._zeropower_via_newtonschulz)
    assert "grad.bfloat16()" in src
    namespace = dict(vars(torch_muon))
    exec(src.replace("grad.bfloat16()", "grad.clone()"), namespace)
    return namespace["_zeropower_via_newtonschulz"]


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("x64", [False, True])
def test_matches_torch(adjust_lr, nesterov, x64, monkeypatch):
    """A Linear weight is (out, in) in torch and our kernel is its transpose (in, out)."""
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _torch_ns_in_its_dtype())
    shapes = {"tall": (3, 6), "wide": (5, 2), "square": (4, 4)}  # (in, out) kernels
    params, grads = _random(shapes, 1, 8)
    lr, wd, mom = 0.03, 0.1, 0.9
    eps = 1e-7 if not x64 else 1e-30  # torch clamps the norm at eps, we add it: equal without eps
    weights = {k: torch.tensor(v.T, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Muon(list(weights.values()), lr=lr, weight_decay=wd, momentum=mom, nesterov=nesterov, eps=eps,
                           adjust_lr_fn=adjust_lr)
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        tx = optimizers.muon(lr, beta=mom, eps=eps, weight_decay=wd, nesterov=nesterov, adjust_lr=adjust_lr,
                             ns_dtype=dtype)
        ours = _run(tx, {k: v.astype(dtype) for k, v in params.items()}, [{k: v.astype(dtype) for k, v in g.items()}
                                                                         for g in grads])
        for g, got in zip(grads, ours):
            for k, w in weights.items():
                w.grad = torch.tensor(g[k].T, dtype=torch.float64)
            opt.step()
            for k, w in weights.items():
                tol = dict(rtol=1e-10, atol=1e-12) if x64 else dict(rtol=1e-5, atol=2e-6)
                np.testing.assert_allclose(np.asarray(got[k]).T, w.detach().numpy(), **tol, err_msg=k)


# ------------------------------------------------------------------ optax.contrib.muon, form="optax"

OPTAX_SHAPES = {"w": (4, 6), "t": (6, 3), "stack": (3, 4, 5), "b": (5,)}
OPTAX_DIMS = {"w": DN(), "t": DN(), "stack": DN(1, 2), "b": None}
OPTAX_CASES = {
    "defaults": dict(),
    "heavy ball, decay, adam keywords": dict(nesterov=False, weight_decay=0.1, adam_b1=0.8, adam_weight_decay=0.01,
                                             adam_learning_rate=0.01, adam_eps_root=1e-6),
    "consistent rms, adaptive": dict(consistent_rms=0.2, adaptive=True),
    "dion preset": dict(ns_coeffs="dion"),
    "per-iteration, fewer than ns_steps": dict(ns_coeffs=(JORDAN, (3.0, -3.2, 1.2), JORDAN)),
    "aol": dict(preconditioning="aol"),
    "schatten": dict(preconditioning="schatten"),
    "spectral": dict(preconditioning="spectral", ns_steps=6),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_optax_form_matches_optax(case):
    kw = OPTAX_CASES[case]
    params, grads = _random(OPTAX_SHAPES, 2, 8)
    theirs = optax.contrib.muon(0.02, muon_weight_dimension_numbers=OPTAX_DIMS, **kw)
    ours = optimizers.muon(0.02, muon_weight_dimension_numbers=OPTAX_DIMS, form="optax", **kw)
    for got, want in zip(_run(ours, params, grads), _run(theirs, params, grads)):
        for k in OPTAX_SHAPES:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_optax_form_with_layer_axes_is_optax_with_its_dimension_numbers():
    params, grads = _random(OPTAX_SHAPES, 3, 6)
    theirs = optax.contrib.muon(0.02, muon_weight_dimension_numbers=OPTAX_DIMS)
    ours = optimizers.muon(0.02, layer_axes={"w": 0, "t": 0, "stack": 1, "b": 0}, form="optax")
    for got, want in zip(_run(ours, params, grads), _run(theirs, params, grads)):
        for k in OPTAX_SHAPES:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_the_forms_differ_in_early_steps():
    params, grads = _random({"w": (4, 6)}, 4, 1)
    a = next(_run(optimizers.muon(0.02, form="optax", nesterov=False), params, grads))["w"]
    b = next(_run(optimizers.muon(0.02, nesterov=False), params, grads))["w"]
    # Step 1: B = (1-μ)g, bias-corrected to g in optax; NS normalizes, so only eps tells them apart...
    np.testing.assert_allclose(a, b, rtol=1e-5)
    params, grads = _random({"w": (4, 6)}, 4, 2)
    a = list(_run(optimizers.muon(0.02, form="optax"), params, grads))[-1]["w"]
    b = list(_run(optimizers.muon(0.02), params, grads))[-1]["w"]
    assert np.abs(a - b).max() > 1e-4  # ...with Nesterov, the bias corrections weigh g and B differently


# ------------------------------------------------------------------ stacked equals unrolled


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 3)], ids=["L=1", "L=3", "two layer axes"])
@pytest.mark.parametrize("form", ["reference", "optax"])
def test_stacked_equals_unrolled(lead, form):
    m, n = 5, 3
    params, grads = _random({"s": lead + (m, n)}, 5, 4)
    stacked = optimizers.muon(0.02, weight_decay=0.1, layer_axes=len(lead), form=form)
    n_layers = int(np.prod(lead))
    unroll = lambda tree: {f"l{i}": x for i, x in enumerate(tree["s"].reshape((n_layers, m, n)))}  # noqa: E731
    unrolled = optimizers.muon(0.02, weight_decay=0.1, form=form)
    for got, want in zip(_run(stacked, params, grads), _run(unrolled, unroll(params), [unroll(g) for g in grads])):
        got = np.asarray(got["s"]).reshape((n_layers, m, n))
        for i in range(n_layers):
            np.testing.assert_allclose(got[i], want[f"l{i}"], rtol=1e-6, atol=1e-7)


def test_without_layer_axes_a_3d_leaf_goes_to_adamw():
    params = {"s": jnp.ones((3, 4, 5)), "w": jnp.ones((4, 5))}
    state = optimizers.muon(0.02).init(params)
    muon_mu = state.inner_states["muon"].inner_state[0].mu
    adam_mu = state.inner_states["adam"].inner_state[0].mu
    assert isinstance(muon_mu["s"], optax.MaskedNode) and adam_mu["s"].shape == (3, 4, 5)
    assert muon_mu["w"].shape == (4, 5) and isinstance(adam_mu["w"], optax.MaskedNode)
    state = optimizers.muon(0.02, layer_axes=1).init(params)  # w: a stack of 4 vectors: AdamW
    assert state.inner_states["muon"].inner_state[0].mu["s"].shape == (3, 4, 5)
    assert isinstance(state.inner_states["muon"].inner_state[0].mu["w"], optax.MaskedNode)


def test_muon_mask_keeps_embedding_and_head_on_adamw():
    params = {"embed": jnp.ones((10, 4)), "hidden": jnp.ones((4, 4)), "bias": jnp.ones(4), "head": jnp.ones((4, 10))}
    tx = optimizers.muon(0.02, muon_mask=lambda p: {k: k not in ("embed", "head") for k in p})
    mu = tx.init(params).inner_states["muon"].inner_state[0].mu
    assert [k for k, v in mu.items() if not isinstance(v, optax.MaskedNode)] == ["hidden"]


# ------------------------------------------------------------------ the iteration itself


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (5, 5)])
@pytest.mark.parametrize("steps", [5, 10])
def test_polar_express_is_algorithm_1(shape, steps):
    """Amsel et al. 2025, Algorithm 1: the published coefficients with the 1.01 safety factor
    (not on the last), X = G/(1.01‖G‖ + 1e-7), the last polynomial repeated after the eighth."""
    raw = [(8.28721201814563, -23.595886519098837, 17.300387312530933),
           (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
           (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
           (3.3184196573706015, -2.488488024314874, 0.51004894012372),
           (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
           (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
           (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
           (1.875, -1.25, 0.375)]
    coeffs = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in raw[:-1]] + [raw[-1]]
    hs = coeffs[:steps] + [coeffs[-1]] * (steps - len(coeffs))
    g = np.random.default_rng(6).normal(size=shape)
    with jax.enable_x64(True):
        got = optimizers.orthogonalize(jnp.asarray(g), "polar_express", steps, ns_dtype=jnp.float64)
    np.testing.assert_allclose(got, _ns_reference(g, hs, 1e-7, factor=1.01), rtol=1e-10, atol=1e-12)
    if steps == 10:  # and it does converge to the polar factor
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        np.testing.assert_allclose(got, u @ vt, atol=1e-2)


def test_bfloat16_iteration_is_close_to_the_float64_one():
    g = np.random.default_rng(7).normal(size=(3, 16, 24)).astype(np.float32)
    got = jax.jit(lambda x: optimizers.orthogonalize(x, ns_dtype=jnp.bfloat16))(g)
    assert got.dtype == jnp.float32
    want = np.stack([_ns_reference(x.astype(np.float64), [JORDAN] * 5, 1e-7) for x in g])
    assert np.abs(np.asarray(got) - want).max() < 0.1  # bfloat16's 8 bits, through five iterations
    params, grads = _random({"w": (16, 24)}, 8, 3)
    out = list(_run(optimizers.muon(0.02, ns_dtype=jnp.bfloat16), params, grads))[-1]["w"]
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coeffs=(1.0, 2.0)), "ns_coeffs"),
    (dict(ns_coeffs=((1.0, 2.0, 3.0), (1.0, 2.0))), "ns_coeffs"),
    (dict(ns_coeffs="bogus"), "ns_coeffs"),
    (dict(beta=1.0), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(form="torch"), "form"),
    (dict(adjust_lr="bogus"), "adjust_lr"),
    (dict(adjust_lr="original", consistent_rms=0.2), "consistent_rms"),
    (dict(form="optax", ns_coeffs=(JORDAN,) * 6), "ns_steps"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizers.muon(0.02, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(muon_weight_dimension_numbers={"w": DN(0, 5), "b": None, "s": None}), r"\['w'\].*output_axis 5, out of"),
    (dict(muon_weight_dimension_numbers={"w": DN(-3, 1), "b": None, "s": None}), r"\['w'\].*reduction_axis -3, out"),
    (dict(muon_weight_dimension_numbers={"w": DN(0, 0), "b": None, "s": None}), r"\['w'\].*repeat"),
    (dict(muon_weight_dimension_numbers={"w": DN(0, 1), "b": None, "s": None}, layer_axes={"w": 1, "b": 0, "s": 0}),
     r"\['w'\].*layer axes"),
    (dict(muon_mask={"w": True, "b": True, "s": True}), r"\['s'\].*Muon mask"),
    (dict(muon_mask={"w": True, "b": False, "s": True}, layer_axes={"w": 0, "b": 0, "s": 1}), None),
])
def test_inconsistent_leaves_raise_naming_the_path(kwargs, match):
    """A stack that the mask calls Muon's without its layer axes is an error; a vector it calls Muon's
    (a bias, under a mask written by name) has nothing to orthogonalize and goes to AdamW."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "s": jnp.ones((2, 3, 4))}
    if match is None:
        mu = optimizers.muon(0.02, **kwargs).init(params).inner_states["muon"].inner_state[0].mu
        assert isinstance(mu["b"], optax.MaskedNode) and mu["s"].shape == (2, 3, 4)
        return
    with pytest.raises(ValueError, match=match):
        optimizers.muon(0.02, **kwargs).init(params)


def test_orthogonalize_rejects_a_vector():
    with pytest.raises(ValueError, match="rank 2"):
        optimizers.orthogonalize(jnp.ones(3))


# ------------------------------------------------------------------ composes with the wrappers


def test_quantized_momentum_is_one_byte_per_parameter_and_close():
    params, grads = _random({"w": (64, 128), "b": (128,)}, 9, 6)
    plain = optimizers.muon(0.02, layer_axes=0)
    quantized = optimizers.with_quantized_state(optimizers.muon(0.02, layer_axes=0), min_size=1024)
    state = quantized.init(jax.tree.map(jnp.asarray, params))
    codes = [x for x in jax.tree.leaves(state) if x.dtype in (jnp.int8, jnp.uint8)]
    assert [c.size for c in codes] == [64 * 128]  # Muon's momentum of w; b's Adam moments are small
    for got, want in zip(_run(quantized, params, grads), _run(plain, params, grads)):
        np.testing.assert_allclose(got["w"], want["w"], atol=2e-3)  # NS normalizes: 8-bit B, nearby O


def test_mu_dtype_apply_if_finite_and_multisteps():
    params, grads = _random({"w": (6, 4), "b": (4,)}, 10, 4)
    state = optimizers.muon(0.02, mu_dtype=jnp.bfloat16).init(params)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
    assert state.inner_states["muon"].inner_state[0].mu["w"].dtype == jnp.bfloat16
    tx = optimizers.apply_if_finite(optimizers.muon(0.02), max_consecutive_skips=3)
    bad = [grads[0], {"w": np.full((6, 4), np.nan, np.float32), "b": grads[1]["b"]}, grads[2]]
    out = list(_run(tx, params, bad))
    np.testing.assert_array_equal(out[1]["w"], out[0]["w"])  # the NaN step is skipped
    tx = optax.MultiSteps(optimizers.muon(0.02), every_k_schedule=2)
    out = list(_run(tx, params, grads))
    np.testing.assert_array_equal(out[0]["w"], params["w"])
    assert not np.allclose(out[1]["w"], params["w"])


def test_hyperparameters_are_named_by_branch():
    state = optimizers.muon(0.02, adam_learning_rate=3e-3, weight_decay=0.1, adam_weight_decay=0.01).init(
        {"w": jnp.ones((3, 4)), "b": jnp.ones(4)})
    hp = optimizers.get_hyperparams(state)
    assert hp["learning_rate"] == np.float32(0.02) and hp["adam_learning_rate"] == np.float32(3e-3)
    assert hp["weight_decay"] == np.float32(0.1) and hp["adam_weight_decay"] == np.float32(0.01)
    state = optimizers.set_hyperparams(state, adam_learning_rate=1e-3)
    assert optimizers.get_hyperparams(state)["learning_rate"] == np.float32(0.02)
