import jax
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _yogi_reference(grads, b1, b2, eps, eps_root=0.0, v0=1e-6, form="paper", signs=None):
    """Algorithm 2 of Zaheer et al. (2018) (``form="paper"``: m_0 = 0, no bias correction), or optax's
    form (m_0 = v_0 = v0, both moments bias-corrected). ``signs`` collects sign(v_{t-1} - g_t^2)."""
    m = np.full_like(grads[0], v0 if form == "optax" else 0.0, np.float64)
    v = np.full_like(grads[0], v0, np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        sign = np.sign(v - g**2)
        if signs is not None:
            signs.extend(np.ravel(sign))
        v = v - (1 - b2) * sign * g**2
        c1, c2 = (1 - b1**t, 1 - b2**t) if form == "optax" else (1.0, 1.0)
        yield m / c1 / (np.sqrt(v / c2 + eps_root) + eps)


def _grads(seed):
    """Gradients that grow then shrink: v_{t-1} - g_t^2 takes both signs."""
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda g, k=k: g * (0.2 if k < 8 else 2.0 if k < 14 else 0.1), random_tree(rng))
            for k in range(25)]


CASES = {  # (b1, b2, eps, eps_root, v0, form)
    "paper": (0.9, 0.999, 1e-3, 0.0, 1e-6, "paper"),
    "paper, eps_root, v0": (0.5, 0.9, 1e-3, 1e-4, 0.5, "paper"),
    "optax": (0.9, 0.99, 1e-3, 0.0, 1e-6, "optax"),
    "optax, eps_root, v0": (0.0, 0.9, 1e-2, 1e-4, 0.5, "optax"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_yogi_matches_paper(case):
    b1, b2, eps, eps_root, v0, form = CASES[case]
    grads = _grads(21)
    got = run_updates(optimizers.scale_by_yogi(b1, b2, eps, eps_root or None, v0, form=form), grads)
    check_reference(got, grads, lambda gs: _yogi_reference(gs, b1, b2, eps, eps_root, v0, form))
    signs = []
    for seq in zip(*[jax.tree.leaves(g) for g in grads]):
        list(_yogi_reference(list(seq), b1, b2, eps, eps_root, v0, form, signs))
    assert {-1.0, 1.0} <= set(signs)  # both sides of the sign


def test_yogi_params_match_paper():
    grads, theta0 = _grads(22), random_tree(np.random.default_rng(23))

    def reference(theta, gs):
        for u in _yogi_reference(gs, 0.9, 0.999, 1e-3):
            theta = theta - 0.01 * u
            yield theta

    check_reference(run_params(optimizers.yogi(0.01), grads, theta0), grads, reference, params=theta0)


def test_sign_zero_keeps_v():
    """sign(0) = 0: a gradient with g^2 = v_{t-1} leaves v unchanged."""
    tx = optimizers.scale_by_yogi(initial_accumulator_value=0.25)
    params = {"w": np.zeros(3, np.float32)}
    _, state = tx.update({"w": np.array([0.5, -0.5, 1.0], np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(state.nu["w"], [0.25, 0.25, 0.25 + 0.001 * 1.0], rtol=1e-6)


OPTAX_PAIRS = {
    "yogi": (lambda: optimizers.yogi(0.01, 0.8, 0.99, 1e-3, form="optax"), lambda: optax.yogi(0.01, 0.8, 0.99, 1e-3)),
    "scale_by_yogi(eps_root, initial_accumulator_value)": (
        lambda: optimizers.scale_by_yogi(0.9, 0.9, 1e-2, 1e-4, 0.3, form="optax"),
        lambda: optax.scale_by_yogi(0.9, 0.9, 1e-2, 1e-4, 0.3)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_optax_form_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = _grads(24), random_tree(np.random.default_rng(25))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


def test_paper_form_differs_from_optax():
    grads, theta0 = _grads(26), random_tree(np.random.default_rng(27))
    ours = run_params_f64(optimizers.yogi(0.01), grads, theta0)[-1]
    theirs = run_params_f64(optax.yogi(0.01), grads, theta0)[-1]
    assert not np.allclose(jax.tree.leaves(ours)[0], jax.tree.leaves(theirs)[0], rtol=1e-4)


def test_optax_form_matches_pytorch_optimizer():
    """pytorch_optimizer.Yogi: m_0 = v_0 = initial_accumulator, both moments bias-corrected."""
    from pytorch_optimizer import Yogi

    grads, theta0 = _grads(28), random_tree(np.random.default_rng(29))
    theirs = run_torch(lambda ps: Yogi(ps, lr=1e-2, betas=(0.8, 0.99), initial_accumulator=1e-3, eps=1e-3,
                                       weight_decay=0.0, foreach=False), theta0, grads)
    ours = run_params_f64(optimizers.yogi(1e-2, 0.8, 0.99, 1e-3, initial_accumulator_value=1e-3, form="optax"),
                          grads, theta0)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-10)
