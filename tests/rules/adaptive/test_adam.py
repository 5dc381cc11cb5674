import jax
import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _adam_reference(grads, b1, b2, eps):
    m = v = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        yield (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def _amsgrad_reference(grads, b1, b2, eps, max_over):
    m = v = vmax = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if max_over == "corrected":  # the table: max over v_hat
            vmax = np.maximum(vmax, v / (1 - b2**t))
            yield (m / (1 - b1**t)) / (np.sqrt(vmax) + eps)
        else:  # PyTorch: max over the raw v
            vmax = np.maximum(vmax, v)
            yield (m / (1 - b1**t)) / (np.sqrt(vmax / (1 - b2**t)) + eps)


def _adamax_reference(grads, b1, b2, eps):
    m = v = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = np.maximum(b2 * v, np.abs(g) + eps)
        yield m / (1 - b1**t) / v


@pytest.mark.parametrize("b1,b2,eps", [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3), (0.0, 0.99, 1e-8)])
def test_scale_by_adam_matches_paper(b1, b2, eps):
    grads = random_grads(25, seed=1)
    got = run_updates(optimizers.scale_by_adam(b1, b2, eps), grads)
    check_reference(got, grads, lambda gs: _adam_reference(gs, b1, b2, eps))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_and_adamw_match_table(wd):
    grads, theta0 = random_grads(25, seed=2), random_tree(np.random.default_rng(3))
    lr = 0.01

    def reference(theta, gs):
        for u in _adam_reference(gs, 0.9, 0.999, 1e-8):
            theta = theta - lr * (u + wd * theta)
            yield theta

    tx = optimizers.adamw(lr, weight_decay=wd) if wd else optimizers.adam(lr)
    check_reference(run_params(tx, grads, theta0), grads, reference, params=theta0)


@pytest.mark.parametrize("max_over", ["corrected", "raw"])
def test_amsgrad_matches_both_forms(max_over):
    # Gradients that shrink then grow make the running max bind on some steps and not others.
    rng = np.random.default_rng(4)
    grads = [jax.tree.map(lambda g, k=k: g * (3.0 if k < 5 else 0.2 if k < 15 else 1.0), random_tree(rng))
             for k in range(25)]
    got = run_updates(optimizers.scale_by_amsgrad(0.9, 0.99, 1e-8, max_over=max_over), grads)
    check_reference(got, grads, lambda gs: _amsgrad_reference(gs, 0.9, 0.99, 1e-8, max_over))
    theta0 = random_tree(rng)

    def reference(theta, gs):
        for u in _amsgrad_reference(gs, 0.9, 0.99, 1e-8, max_over):
            theta = theta - 0.01 * u
            yield theta

    check_reference(run_params(optimizers.amsgrad(0.01, 0.9, 0.99, max_over=max_over), grads, theta0), grads,
                    reference, params=theta0)


def test_amsgrad_forms_differ():
    grads = [jax.tree.map(lambda g, k=k: g * (3.0 if k < 5 else 0.2), random_tree(np.random.default_rng(k)))
             for k in range(20)]
    table = run_updates(optimizers.scale_by_amsgrad(max_over="corrected"), grads)
    raw = run_updates(optimizers.scale_by_amsgrad(max_over="raw"), grads)
    assert not np.allclose(jax.tree.leaves(table[-1])[0], jax.tree.leaves(raw[-1])[0], rtol=1e-3)


def test_adamax_matches_table():
    grads, theta0 = random_grads(25, seed=5), random_tree(np.random.default_rng(6))
    check_reference(run_updates(optimizers.scale_by_adamax(0.9, 0.999, 1e-8), grads), grads,
                    lambda gs: _adamax_reference(gs, 0.9, 0.999, 1e-8))

    def reference(theta, gs):
        for u in _adamax_reference(gs, 0.9, 0.999, 1e-8):
            theta = theta - 0.002 * u
            yield theta

    check_reference(run_params(optimizers.adamax(0.002), grads, theta0), grads, reference, params=theta0)


TORCH_PAIRS = {
    "adam": (lambda: optimizers.adam(1e-2, 0.8, 0.99, 1e-8),
             lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-8)),
    "adamw": (lambda: optimizers.adamw(1e-2, weight_decay=0.05),
              lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05)),
    "adamax": (lambda: optimizers.adamax(2e-3), lambda ps: torch.optim.Adamax(ps, lr=2e-3)),
    "amsgrad-raw": (lambda: optimizers.amsgrad(1e-2, max_over="raw"),
                    lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True)),
}


@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_matches_torch(name):
    ours, theirs = TORCH_PAIRS[name]
    grads, theta0 = random_grads(50, seed=7), random_tree(np.random.default_rng(8))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_torch(theirs, theta0, grads)):
        assert_trees_close(g, w, rtol=1e-10)


def test_amsgrad_table_form_is_not_torch():
    grads = [jax.tree.map(lambda g, k=k: g * (3.0 if k < 5 else 0.2), random_tree(np.random.default_rng(k)))
             for k in range(30)]
    theta0 = random_tree(np.random.default_rng(99))
    got = run_params_f64(optimizers.amsgrad(1e-2), grads, theta0)[-1]
    want = run_torch(lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True), theta0, grads)[-1]
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(want)[0], rtol=1e-6)


OPTAX_PAIRS = {
    "adam": (lambda: optimizers.adam(1e-2), lambda: optax.adam(1e-2)),
    "adamw": (lambda: optimizers.adamw(1e-2, weight_decay=1e-2), lambda: optax.adamw(1e-2, weight_decay=1e-2)),
    "adamax": (lambda: optimizers.adamax(1e-2), lambda: optax.adamax(1e-2)),
    "amsgrad": (lambda: optimizers.amsgrad(1e-2), lambda: optax.amsgrad(1e-2)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = random_grads(30, seed=9), random_tree(np.random.default_rng(10))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}], ids=["all", "masked"])
def test_adamaxw_matches_table_with_decoupled_decay(mask):
    rng = np.random.default_rng(41)
    tree = lambda: {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}  # noqa: E731
    grads, theta0 = [tree() for _ in range(25)], tree()
    lr, wd = 0.002, 0.1
    got = run_params(optimizers.adamaxw(lr, weight_decay=wd, mask=mask), grads, theta0)
    for key in ("w", "b"):
        decay = wd if mask is None or mask[key] else 0.0
        theta = theta0[key]
        for step, u in enumerate(_adamax_reference([g[key] for g in grads], 0.9, 0.999, 1e-8)):
            theta = theta - lr * (u + decay * theta)
            assert_trees_close(got[step][key], theta, rtol=2e-5)


def test_adamaxw_matches_optax():
    grads, theta0 = random_grads(20, seed=42), random_tree(np.random.default_rng(43))
    ours = optimizers.adamaxw(0.01, 0.8, 0.99, 1e-6, 0.05)
    theirs = optax.adamaxw(0.01, 0.8, 0.99, 1e-6, 0.05)
    for g, w in zip(run_params_f64(ours, grads, theta0), run_params_f64(theirs, grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)
