import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, assert_trees_close, random_tree, run_params, run_params_f64, run_updates

from optimizers.rules.momentum.momentum import trace
from optimizers.rules.scaling import scale_by_learning_rate
from optimizers.rules.layerwise.trust_ratio import lamb, lars, scale_by_lars, scale_by_trust_ratio

# The usual leaves plus "zero", whose parameters start at exactly 0 (trust ratio 1).
SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 2, 3), (5,)], "scale": (), "zero": (3, 2)}
# Biases, the scalar and one block are not decayed; only leaves of rank >= 2 are rescaled.
WD_MASK = {"dense": {"w": True, "b": False}, "blocks": [True, False], "scale": False, "zero": True}
TR_MASK = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
ALL = None


def _params(seed):
    params = random_tree(np.random.default_rng(seed), SHAPES)
    params["zero"] = np.zeros(SHAPES["zero"])
    return params


def _grads(steps, seed):
    """Random gradients; the bias gets a zero gradient every 4th step (a zero update norm)."""
    rng = np.random.default_rng(seed)
    grads = [random_tree(rng, SHAPES) for _ in range(steps)]
    for g in grads[::4]:
        g["dense"]["b"] = np.zeros(SHAPES["dense"]["b"])
    return grads


def _flags(mask, params):
    """One boolean per leaf, in leaf order."""
    if mask is None:
        return [True] * len(jax.tree.leaves(params))
    return jax.tree.leaves(mask(params) if callable(mask) else mask)


def _check_leaves(got, grads, params, reference, *masks, rtol=2e-5):
    """Each leaf of each step of ``got`` against ``reference(leaf_params, leaf_grads, *leaf_flags)``."""
    flags = [_flags(m, params) for m in masks]
    for i, (w0, *leaf_flags) in enumerate(zip(jax.tree.leaves(params), *flags, strict=True)):
        seq = [jax.tree.leaves(g)[i] for g in grads]
        want = list(reference(w0, seq, *leaf_flags))
        assert len(want) == len(got)
        for step, w in enumerate(want):
            assert_close(jax.tree.leaves(got[step])[i], w, rtol)


def _norm(x):
    return np.sqrt(np.sum(np.square(x)))


def _trust_ratio_reference(theta, updates, eta, eps, lo, hi, on):
    """LAMB, Section 3.1: u * eta phi(||theta||) / (||u|| + eps), phi(z) = min(max(z, lo), hi)."""
    for t, u in enumerate(updates):
        p_norm, u_norm = min(max(_norm(theta), lo), hi), _norm(u)
        yield eta(t) * p_norm / (u_norm + eps) * u if on and p_norm > 0 and u_norm > 0 else u


def _lars_local(w, g, beta, eta, eps, decay_on, ratio_on):
    """LARS, Eq. (6): lambda = eta ||w|| / (||g|| + beta ||w|| + eps), times g + beta w."""
    beta = beta if decay_on else 0.0
    w_norm, den = _norm(w), _norm(g) + beta * _norm(w)
    ratio = eta * w_norm / (den + eps) if ratio_on and w_norm > 0 and den > 0 else 1.0
    return ratio * (g + beta * w)


def _lars_reference(theta, grads, lr, mu, nesterov, beta, eta, eps, decay_on, ratio_on):
    """LARS, Algorithm 1 (constant learning rate): m = mu m + lambda (g + beta w), w -= lr m."""
    m = np.zeros_like(theta)
    for g in grads:
        d = _lars_local(theta, g, beta, eta, eps, decay_on, ratio_on)
        m = mu * m + d
        theta = theta - lr * (d + mu * m if nesterov else m)
        yield theta


def _table_lars_reference(theta, grads, lr, mu):
    """“Optimization algorithms in deep learning”'s LARS row: m = mu m + g, theta -= lr ||theta|| / ||m|| m."""
    m = np.zeros_like(theta)
    for g in grads:
        m = mu * m + g
        ratio = _norm(theta) / _norm(m) if _norm(theta) > 0 and _norm(m) > 0 else 1.0
        theta = theta - lr * ratio * m
        yield theta


def _lamb_reference(theta, grads, lr, b1, b2, eps, wd, lo, hi, decay_on, ratio_on):
    """LAMB, Algorithm 2: r = m_hat / (sqrt(v_hat) + eps) + wd theta; theta -= lr phi(||theta||)/||r|| r."""
    m = v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        r = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps) + (wd * theta if decay_on else 0.0)
        p_norm, r_norm = min(max(_norm(theta), lo), hi), _norm(r)
        ratio = p_norm / r_norm if ratio_on and p_norm > 0 and r_norm > 0 else 1.0
        theta = theta - lr * ratio * r
        yield theta


@pytest.mark.parametrize("eta,eps,lo,hi,mask", [
    (1.0, None, 0.0, np.inf, ALL),  # LAMB's ratio, optax's defaults
    (0.5, 1e-3, 0.0, np.inf, ALL),
    ("schedule", None, 0.0, np.inf, TR_MASK),
    (1.0, None, 2.0, 3.0, ALL),  # phi binds from below (small leaves, the zero leaf) and above
])
def test_scale_by_trust_ratio_matches_paper(eta, eps, lo, hi, mask):
    eta_fn = (lambda t: 1.0 / (1 + t)) if eta == "schedule" else (lambda t: eta)
    tx = scale_by_trust_ratio(trust_coefficient=eta_fn if eta == "schedule" else eta, eps=eps,
                              min_param_norm=lo, max_param_norm=hi, mask=mask)
    grads, params = _grads(24, seed=1), _params(2)
    norms = [_norm(x) for x in jax.tree.leaves(params)]
    if lo > 0:  # both bounds of phi bind on some leaf
        assert any(0 < n < lo for n in norms) and any(n > hi for n in norms)
    got = run_updates(tx, grads, params=params)
    _check_leaves(got, grads, params, lambda w, gs, on: _trust_ratio_reference(w, gs, eta_fn, eps or 0.0, lo, hi, on),
                  mask)


@pytest.mark.parametrize("beta,eta,eps,wd_mask,tr_mask", [
    (0.0, 0.001, None, ALL, ALL),
    (0.01, 0.02, None, WD_MASK, TR_MASK),
    (0.1, 0.5, 1e-3, ALL, WD_MASK),
])
def test_scale_by_lars_matches_paper(beta, eta, eps, wd_mask, tr_mask):
    grads, params = _grads(24, seed=3), _params(4)
    got = run_updates(scale_by_lars(beta, eta, eps, wd_mask, tr_mask), grads, params=params)

    def reference(w, gs, decay_on, ratio_on):
        return (_lars_local(w, g, beta, eta, eps or 0.0, decay_on, ratio_on) for g in gs)

    _check_leaves(got, grads, params, reference, wd_mask, tr_mask)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("beta,eps,wd_mask,tr_mask", [(0.0, None, ALL, ALL), (1e-3, 1e-6, WD_MASK, TR_MASK)])
def test_lars_matches_paper(nesterov, beta, eps, wd_mask, tr_mask):
    grads, params = _grads(30, seed=5), _params(6)
    tx = lars(2.0, beta, wd_mask, 0.01, eps, tr_mask, 0.9, nesterov)
    got = run_params(tx, grads, params)

    def reference(w, gs, decay_on, ratio_on):
        return _lars_reference(w, gs, 2.0, 0.9, nesterov, beta, 0.01, eps or 0.0, decay_on, ratio_on)

    _check_leaves(got, grads, params, reference, wd_mask, tr_mask)


def test_table_lars_is_a_chain():
    """The table's form (ratio on the momentum) from the building blocks."""
    grads, params = _grads(30, seed=7), _params(8)
    tx = optax.chain(trace(0.9), scale_by_trust_ratio(), scale_by_learning_rate(0.01))
    _check_leaves(run_params(tx, grads, params), grads, params, lambda w, gs: _table_lars_reference(w, gs, 0.01, 0.9))


def test_table_lars_differs_from_paper():
    grads, params = _grads(10, seed=7), _params(8)
    table = run_params_f64(optax.chain(trace(0.9), scale_by_trust_ratio(trust_coefficient=0.01),
                                       scale_by_learning_rate(0.5)),
                           grads, params)
    paper = run_params_f64(lars(0.5, trust_coefficient=0.01), grads, params)
    assert not np.allclose(table[-1]["dense"]["w"], paper[-1]["dense"]["w"], rtol=1e-3)


@pytest.mark.parametrize("wd,lo,hi,wd_mask,tr_mask", [
    (0.0, 0.0, np.inf, ALL, ALL),  # the table's row
    (0.01, 0.0, np.inf, WD_MASK, ALL),
    (0.1, 0.5, 2.5, ALL, TR_MASK),
])
def test_lamb_matches_paper(wd, lo, hi, wd_mask, tr_mask):
    grads, params = _grads(30, seed=9), _params(10)
    got = run_params(lamb(0.01, 0.9, 0.99, 1e-8, weight_decay=wd, mask=wd_mask, trust_ratio_mask=tr_mask,
                          min_param_norm=lo, max_param_norm=hi), grads, params)

    def reference(w, gs, decay_on, ratio_on):
        return _lamb_reference(w, gs, 0.01, 0.9, 0.99, 1e-8, wd, lo, hi, decay_on, ratio_on)

    _check_leaves(got, grads, params, reference, wd_mask, tr_mask)


def test_scale_by_trust_ratio_matches_optax():
    grads, params = _grads(20, seed=11), _params(12)
    with jax.enable_x64(True):
        for ours, theirs in [
            (scale_by_trust_ratio(), optax.scale_by_trust_ratio()),
            (scale_by_trust_ratio(trust_coefficient=0.3, eps=1e-2),
             optax.scale_by_trust_ratio(trust_coefficient=0.3, eps=1e-2)),
        ]:
            got = run_updates(ours, grads, params, dtype=np.float64)
            want = run_updates(theirs, grads, params, dtype=np.float64)
            for g, w in zip(got, want, strict=True):
                assert_trees_close(g, w, rtol=1e-12)


OPTAX_PAIRS = {
    "lamb": (lambda: lamb(1e-2, eps=1e-6, weight_decay=0.01, mask=WD_MASK),
             lambda: optax.lamb(1e-2, eps=1e-6, weight_decay=0.01, mask=WD_MASK)),
    "lars": (lambda: lars(0.5, trust_coefficient=0.01, trust_ratio_mask=TR_MASK),
             lambda: optax.lars(0.5, trust_coefficient=0.01, trust_ratio_mask=TR_MASK)),
    "lars-nesterov-eps": (lambda: lars(0.5, trust_coefficient=0.01, eps=1e-3, momentum=0.8, nesterov=True),
                          lambda: optax.lars(0.5, trust_coefficient=0.01, eps=1e-3, momentum=0.8, nesterov=True)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax(name):
    """50 steps in float64; LARS with weight_decay=0, where optax's ratio is the paper's."""
    ours, theirs = OPTAX_PAIRS[name]
    grads, params = _grads(50, seed=13), _params(14)
    for g, w in zip(run_params_f64(ours(), grads, params), run_params_f64(theirs(), grads, params), strict=True):
        assert_trees_close(g, w, rtol=1e-10)


def test_lars_weight_decay_differs_from_optax():
    """optax divides by ||g + beta w||, the paper by ||g|| + beta ||w||: the steps differ."""
    grads, params = _grads(50, seed=13), _params(14)
    ours = run_params_f64(lars(0.5, 0.05, trust_coefficient=0.01), grads, params)
    theirs = run_params_f64(optax.lars(0.5, 0.05, trust_coefficient=0.01), grads, params)
    diff = [abs(a - b).max() / abs(b).max() for a, b in zip(jax.tree.leaves(ours[-1]), jax.tree.leaves(theirs[-1]))]
    assert max(diff) > 1e-4


def test_lars_learning_rate_schedule_inside_momentum_is_optax():
    """The paper's (and optax's) gamma_t inside the momentum; PyTorch's form, outside, differs."""
    grads, params = _grads(50, seed=15), _params(16)
    lr = lambda t: 0.5 / (1 + t)  # noqa: E731
    got = run_params_f64(lars(lr, trust_coefficient=0.01), grads, params)
    for g, w in zip(got, run_params_f64(optax.lars(lr, trust_coefficient=0.01), grads, params), strict=True):
        assert_trees_close(g, w, rtol=1e-10)
    torch_form = optax.chain(scale_by_lars(trust_coefficient=0.01), trace(0.9), scale_by_learning_rate(lr))
    outside = run_params_f64(torch_form, grads, params)
    assert not np.allclose(outside[-1]["dense"]["w"], got[-1]["dense"]["w"], rtol=1e-3)


@pytest.mark.parametrize("make", [lambda: lamb(0.1, weight_decay=0.1), lambda: lars(0.1, 0.1, eps=1e-8),
                                  lambda: optax.chain(scale_by_trust_ratio(eps=1e-8), scale_by_learning_rate(0.1))])
def test_zero_params_and_zero_grads_give_no_nan(make):
    params = {"w": jnp.zeros((3, 2)), "s": jnp.zeros(())}
    tx = make()
    state = tx.init(params)
    for g in [jax.tree.map(jnp.zeros_like, params), {"w": jnp.ones((3, 2)), "s": jnp.ones(())}]:
        u, state = jax.jit(tx.update)(g, state, params)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))
    assert all(np.any(x != 0) for x in jax.tree.leaves(u))


def test_zero_params_take_the_unscaled_step():
    """A zero leaf has ratio 1: its first LARS step is -lr g, not -lr * 0."""
    params, g = {"w": jnp.zeros((3, 2))}, {"w": jnp.full((3, 2), 2.0)}
    tx = lars(0.1)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["w"], -0.2)


@pytest.mark.parametrize("make", [lambda: lamb(1e-2), lambda: lars(1.0)])
def test_bfloat16(make):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _params(17))
    grads = [jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g) for g in _grads(3, seed=18)]
    tx = make()
    state = tx.init(params)
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, params)
        assert all(x.dtype == jnp.bfloat16 and np.all(np.isfinite(np.float32(x))) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("tx", [scale_by_trust_ratio(), scale_by_lars(), lamb(0.1), lars(0.1)])
def test_needs_params(tx):
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


def test_param_norm_bounds_are_ordered():
    with pytest.raises(ValueError, match=r"max_param_norm must be .*got 1.0"):
        scale_by_trust_ratio(min_param_norm=2.0, max_param_norm=1.0)
    with pytest.raises(ValueError, match=r"max_param_norm must be .*got 0.5"):
        lamb(0.1, min_param_norm=1.0, max_param_norm=0.5)
