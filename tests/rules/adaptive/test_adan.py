import jax
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _adan_reference(grads, b1, b2, b3, eps, eps_root=0.0, form="paper"):
    """Algorithm 1 of Xie et al. (2022) in the authors' convention of the betas, with their code's bias
    corrections and first difference g_1 - g_0 = 0; ``form="optax"`` weighs the difference by 1 - b2."""
    c = b2 if form == "paper" else 1 - b2
    m = v = n = np.zeros_like(grads[0], np.float64)
    prev = grads[0]  # the authors' code: g_0 = g_1
    for k, g in enumerate(grads, start=1):
        diff = g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + c * diff) ** 2
        prev = g
        yield (m / (1 - b1**k) + c * v / (1 - b2**k)) / (np.sqrt(n / (1 - b3**k) + eps_root) + eps)


CASES = {  # (b1, b2, b3, eps, eps_root, form)
    "paper": (0.98, 0.92, 0.99, 1e-8, 0.0, "paper"),
    "paper, other betas": (0.9, 0.5, 0.9, 1e-3, 1e-4, "paper"),
    "optax": (0.98, 0.92, 0.99, 1e-8, 1e-8, "optax"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_adan_matches_paper(case):
    b1, b2, b3, eps, eps_root, form = CASES[case]
    grads = random_grads(25, seed=61)
    tx = optimizers.scale_by_adan(b1, b2, b3, eps, eps_root or None, form=form)
    reference = lambda gs: _adan_reference(gs, b1, b2, b3, eps, eps_root, form)  # noqa: E731
    with jax.enable_x64(True):  # the rule itself, to float64's roundoff
        check_reference(run_updates(tx, grads, dtype=np.float64), grads, reference, rtol=1e-10)
    # float32: m_hat and c v_hat nearly cancel on some steps (a scalar leaf has no larger entry to
    # set the scale), which multiplies the roundoff by (|m_hat| + c |v_hat|) / |m_hat + c v_hat|.
    check_reference(run_updates(tx, grads), grads, reference, rtol=2e-4)


def _tree(rng):
    return {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}


@pytest.mark.parametrize("no_prox", [False, True])
@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}], ids=["all", "masked"])
def test_adan_decay_matches_paper(no_prox, mask):
    """Algorithm 1's proximal step theta = (theta - lr u)/(1 + lr wd), or with no_prox the decoupled
    theta - lr (u + wd theta); a masked-out leaf takes theta - lr u."""
    rng = np.random.default_rng(62)
    grads, theta0 = [_tree(rng) for _ in range(25)], _tree(rng)
    lr, wd = 0.01, 0.5
    got = run_params(optimizers.adan(lr, weight_decay=wd, mask=mask, no_prox=no_prox), grads, theta0)
    for key in ("w", "b"):
        decay = wd if mask is None or mask[key] else 0.0
        theta = theta0[key]
        for step, u in enumerate(_adan_reference([g[key] for g in grads], 0.98, 0.92, 0.99, 1e-8)):
            theta = theta - lr * (u + decay * theta) if no_prox else (theta - lr * u) / (1 + lr * decay)
            assert_trees_close(got[step][key], theta, rtol=2e-5)


def test_first_difference_is_zero():
    """Step 1 sees no difference: u_1 = g_1 / (|g_1| + eps) for any b2, both forms."""
    grads = random_grads(1, seed=63)
    for form in ("paper", "optax"):
        got = run_updates(optimizers.scale_by_adan(b2=0.5, form=form), grads)[0]
        want = jax.tree.map(lambda g: g / (np.abs(g) + 1e-8), grads[0])
        assert_trees_close(got, want, rtol=1e-6)


def test_optax_form_matches_optax():
    grads, theta0 = random_grads(20, seed=64), random_tree(np.random.default_rng(65))
    ours = optimizers.adan(0.01, 0.9, 0.8, 0.95, 1e-6, 1e-8, 0.05, form="optax", no_prox=True)
    theirs = optax.adan(0.01, 0.9, 0.8, 0.95, 1e-6, 1e-8, 0.05)
    for g, w in zip(run_params_f64(ours, grads, theta0), run_params_f64(theirs, grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


def test_paper_form_differs_from_optax():
    grads, theta0 = random_grads(20, seed=66), random_tree(np.random.default_rng(67))
    ours = run_params_f64(optimizers.adan(0.01, eps_root=1e-8), grads, theta0)[-1]
    theirs = run_params_f64(optax.adan(0.01), grads, theta0)[-1]
    assert not np.allclose(jax.tree.leaves(ours)[0], jax.tree.leaves(theirs)[0], rtol=1e-4)


@pytest.mark.parametrize("weight_decouple", [False, True])
def test_matches_pytorch_optimizer(weight_decouple):
    """pytorch_optimizer.Adan follows the authors' code: proximal decay unless weight_decouple."""
    from pytorch_optimizer import Adan

    grads, theta0 = random_grads(30, seed=68), random_tree(np.random.default_rng(69))
    theirs = run_torch(lambda ps: Adan(ps, lr=1e-2, betas=(0.9, 0.8, 0.95), weight_decay=0.1,
                                       weight_decouple=weight_decouple, eps=1e-6, foreach=False), theta0, grads)
    ours = run_params_f64(optimizers.adan(1e-2, 0.9, 0.8, 0.95, 1e-6, weight_decay=0.1, no_prox=weight_decouple),
                          grads, theta0)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-10)
