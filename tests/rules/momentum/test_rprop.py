import jax
import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

from optimizers.rules.momentum.rprop import rprop, scale_by_rprop


def _rprop_reference(grads, eta_plus, eta_minus, zmin, zmax, form):
    prev = np.zeros_like(grads[0], np.float64)
    zeta = np.ones_like(prev)
    for g in grads:
        s = np.sign(g * prev)
        if form == "table":  # the table: keep zeta when s == 0, step even after a sign change
            zeta = np.where(s > 0, np.minimum(zeta * eta_plus, zmax),
                            np.where(s < 0, np.maximum(zeta * eta_minus, zmin), zeta))
        else:  # torch.optim.Rprop: clip always, no step and forget g after a sign change
            zeta = np.clip(zeta * np.where(s > 0, eta_plus, np.where(s < 0, eta_minus, 1.0)), zmin, zmax)
            g = np.where(s < 0, 0.0, g)
        prev = g
        yield zeta * np.sign(g)


def _grads(steps, seed):
    """Every branch: a leaf whose gradient keeps its sign (zeta reaches the max), one that
    alternates (zeta reaches the min), random signs elsewhere, and exact zeros (g_{t-1} g_t = 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for t, g in enumerate(random_grads(steps, seed=seed)):
        g["dense"]["b"] = np.abs(g["dense"]["b"]) + 0.1
        g["blocks"][1] = (-1.0) ** t * (np.abs(g["blocks"][1]) + 0.1)
        g["dense"]["w"] = np.where(rng.random((4, 3)) < 0.2, 0.0, g["dense"]["w"])
        out.append(g)
    return out


@pytest.mark.parametrize("form", ["table", "torch"])
@pytest.mark.parametrize("eta_plus,eta_minus,zmin,zmax", [(1.2, 0.5, 1e-4, 5e3), (1.5, 0.3, 0.05, 2.0)])
def test_scale_by_rprop_matches_both_forms(form, eta_plus, eta_minus, zmin, zmax):
    grads = _grads(30, seed=1)
    got = run_updates(scale_by_rprop(eta_plus=eta_plus, eta_minus=eta_minus, min_scale=zmin, max_scale=zmax,
                                     form=form), grads)
    check_reference(got, grads, lambda gs: _rprop_reference(gs, eta_plus, eta_minus, zmin, zmax, form))
    if zmax == 2.0:  # the bounds were reached
        assert np.all(np.abs(got[-1]["dense"]["b"]) == np.float32(2.0))
        assert np.all(np.abs(got[-2]["blocks"][1]) <= 0.05 * (1 + 1e-6))


@pytest.mark.parametrize("form", ["table", "torch"])
def test_rprop_scales_the_steps_by_the_learning_rate(form):
    grads, theta0 = _grads(25, seed=2), random_tree(np.random.default_rng(3))
    lr = 0.01

    def reference(theta, gs):
        for u in _rprop_reference(gs, 1.2, 0.5, 0.1, 3.0, form):
            theta = theta - lr * u
            yield theta

    got = run_params(rprop(lr, min_scale=0.1, max_scale=3.0, form=form), grads, theta0)
    check_reference(got, grads, reference, params=theta0)


@pytest.mark.parametrize("lr,step_sizes", [(0.01, (1e-6, 50.0)), (0.05, (0.02, 0.1))])
def test_rprop_torch_form_matches_torch(lr, step_sizes):
    # (0.02, 0.1) around lr=0.05 makes both bounds bind; torch clips its step sizes in place.
    grads, theta0 = _grads(50, seed=4), random_tree(np.random.default_rng(5))
    tx = rprop(lr, min_scale=step_sizes[0] / lr, max_scale=step_sizes[1] / lr, form="torch")
    got = run_params_f64(tx, grads, theta0)
    want = run_torch(lambda ps: torch.optim.Rprop(ps, lr=lr, etas=(0.5, 1.2), step_sizes=step_sizes), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_table_form_is_not_torch():
    grads, theta0 = _grads(20, seed=6), random_tree(np.random.default_rng(7))
    got = run_params_f64(rprop(0.01), grads, theta0)[-1]
    want = run_torch(lambda ps: torch.optim.Rprop(ps, lr=0.01), theta0, grads)[-1]
    assert not np.allclose(got["dense"]["w"], want["dense"]["w"], rtol=1e-6)


def test_optax_rprop_emits_the_previous_step():
    """The difference documented in scale_by_rprop: optax's first update is 0, ours is lr * sign(g)."""
    grads, theta0 = _grads(2, seed=8), random_tree(np.random.default_rng(9))
    ours = run_params_f64(rprop(0.01, form="torch"), grads, theta0)[0]
    theirs = run_params_f64(optax.rprop(0.01), grads, theta0)[0]
    assert_trees_close(theirs, theta0, rtol=1e-15)
    assert_trees_close(ours, jax.tree.map(lambda p, g: p - 0.01 * np.sign(g), theta0, grads[0]), rtol=1e-12)
