import math

import jax
import numpy as np
import optax
import pytest
import torch
from dadaptation import DAdaptAdam, DAdaptSGD
from helpers import assert_trees_close, estimates_beside_torch, random_grads, random_tree, run_params, run_params_f64, run_torch

import optimizers


def _dadapt_adam_reference(theta0, grads, lr=1.0, b1=0.9, b2=0.999, eps=1e-8, d0=1e-6, wd=0.0, decouple=True,
                           bias_correction=False, growth=math.inf):
    """D-Adapted Adam over a list of leaves (the model), in float64, from Algorithm 5 with dadaptation's options.

    Yields the params and the estimate d after each step.
    """
    beta = math.sqrt(b2)
    x = [np.array(t, np.float64) for t in theta0]
    m, v, s = ([np.zeros_like(t) for t in x] for _ in range(3))
    d, r, k = d0, 0.0, 0
    for step, gs in enumerate(grads):
        gamma = lr(step) if callable(lr) else lr
        if gamma == 0:  # a zero denominator: the step is skipped
            yield [t.copy() for t in x], d
            continue
        g = [np.array(gi, np.float64) + (0.0 if decouple else wd * xi) for gi, xi in zip(gs, x)]
        rho = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if bias_correction else 1.0
        dlr = d * gamma * rho
        inner = sum(float(np.sum(gi * si / (np.sqrt(vi) + eps))) for gi, si, vi in zip(g, s, v))  # old s, v
        r = beta * r + (1 - beta) * dlr * inner
        m = [b1 * mi + (1 - b1) * dlr * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        s = [beta * si + (1 - beta) * dlr * gi for si, gi in zip(s, g)]
        d_hat = r / ((1 - beta) * sum(float(np.sum(np.abs(si))) for si in s))
        x = [xi - dlr * (wd * xi if decouple else 0.0) - mi / (np.sqrt(vi) + eps) for xi, mi, vi in zip(x, m, v)]
        d, k = max(d, min(d_hat, d * growth)), k + 1
        yield [t.copy() for t in x], d


# (our keywords, DAdaptAdam's keywords).
CASES = {
    "defaults": ({}, {}),
    "decoupled decay": (dict(weight_decay=0.1), dict(weight_decay=0.1, decouple=True)),
    "l2 decay (DAdaptAdam's default)": (dict(weight_decay=0.1, decouple=False), dict(weight_decay=0.1)),
    "bias correction": (dict(use_bias_correction=True, weight_decay=0.05),
                        dict(use_bias_correction=True, weight_decay=0.05, decouple=True)),
    "growth, d0, betas, lr": (dict(growth_rate=1.5, d0=1e-3, betas=(0.8, 0.99), learning_rate=0.5),
                              dict(growth_rate=1.5, d0=1e-3, betas=(0.8, 0.99), lr=0.5)),
}
NAMES = dict(learning_rate="lr", weight_decay="wd", decouple="decouple", use_bias_correction="bias_correction",
             growth_rate="growth", d0="d0", estim_lr0="d0", eps="eps")


def _problem(seed, steps=20):
    """Params and gradients that point partly back toward the start, so the estimate d grows."""
    rng = np.random.default_rng(seed)
    theta0 = random_tree(rng)
    grads = [jax.tree.map(lambda g, t: g + 2.0 * t, gi, theta0) for gi in random_grads(steps, seed=seed + 1)]
    return theta0, grads


def _reference_kwargs(ours):
    kw = {NAMES[k]: v for k, v in ours.items() if k != "betas"}
    if "betas" in ours:
        kw.update(b1=ours["betas"][0], b2=ours["betas"][1])
    return kw


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dadaptation_in_float64(case):
    ours, theirs = CASES[case]
    theta0, grads = _problem(3)
    got = run_params_f64(optimizers.dadapt_adamw(**ours), grads, theta0)
    want = run_torch(lambda ps: DAdaptAdam(ps, **theirs), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)
    moved = max(np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(want[-1]), jax.tree.leaves(theta0)))
    assert moved > 1e-4  # the estimate grew: 20 steps of d0 = 1e-6 move 2e-5 at most


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_transcription(case):
    ours, _ = CASES[case]
    theta0, grads = _problem(5)
    treedef = jax.tree.structure(theta0)
    want = [jax.tree.unflatten(treedef, w) for w, _ in
            _dadapt_adam_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads],
                                   **_reference_kwargs(ours))]
    for g, w in zip(run_params_f64(optimizers.dadapt_adamw(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)
    # float32: unlike Prodigy's, the estimate has no x0 - x to lose digits in (its numerator weighs the
    # gradients by the weighted sum s), so the usual float32 tolerance holds.
    for g, w in zip(run_params(optimizers.dadapt_adamw(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=2e-5)


def test_estimate_is_readable_and_equals_dadaptations():
    theta0, grads = _problem(7, steps=12)
    tx = optimizers.dadapt_adamw(weight_decay=0.01)
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in jax.tree.leaves(theta0)]
    ref = DAdaptAdam(tensors, weight_decay=0.01, decouple=True)
    for d, want in estimates_beside_torch(tx, ref, tensors, theta0, grads):
        np.testing.assert_allclose(d, want, rtol=1e-10)
    assert float(d) > 1e-4  # grew from d0 = 1e-6


def test_zero_learning_rate_skips_the_step_as_dadaptation_does():
    schedule = lambda t: min(1.0, t / 3)  # noqa: E731
    theta0, grads = _problem(9, steps=8)
    got = run_params_f64(optimizers.dadapt_adamw(lambda t: jax.numpy.minimum(1.0, t / 3), use_bias_correction=True),
                         grads, theta0)
    flat, treedef = jax.tree.flatten(theta0)
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in flat]
    ref = DAdaptAdam(tensors, use_bias_correction=True)
    for step, (g, mine) in enumerate(zip(grads, got)):
        ref.param_groups[0]["lr"] = schedule(step)
        for t, gl in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(np.asarray(gl, np.float64))
        ref.step()
        assert_trees_close(mine, jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors]), rtol=1e-10)
    assert_trees_close(got[0], theta0, rtol=0.0)


def test_bias_corrected_form_is_optax():
    theta0, grads = _problem(11, steps=15)
    ours = optimizers.dadapt_adamw(1.0, (0.9, 0.99), 1e-8, 1e-5, 0.05, use_bias_correction=True)
    theirs = optax.contrib.dadapt_adamw(1.0, (0.9, 0.99), 1e-8, 1e-5, 0.05)
    for g, w in zip(run_params_f64(ours, grads, theta0), run_params_f64(theirs, grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)


def test_default_differs_from_optax_by_its_bias_correction():
    """optax's first step is sqrt(1 - b2) / (1 - b1) = 0.316 of dadaptation's default one."""
    theta0, grads = _problem(13, steps=30)
    ours = run_params_f64(optimizers.dadapt_adamw(), grads, theta0)
    theirs = run_params_f64(optax.contrib.dadapt_adamw(), grads, theta0)
    first = lambda run: np.concatenate([np.ravel(a - b) for a, b in  # noqa: E731
                                        zip(jax.tree.leaves(run[0]), jax.tree.leaves(theta0))])
    np.testing.assert_allclose(first(theirs), math.sqrt(1 - 0.999) / (1 - 0.9) * first(ours), rtol=1e-9)
    last = lambda run: np.concatenate([np.ravel(a) for a in jax.tree.leaves(run[-1])])  # noqa: E731
    assert np.linalg.norm(last(ours) - last(theirs)) > 0.05 * np.linalg.norm(last(ours) - last([theta0]))


@pytest.mark.parametrize("kwargs,name", [
    (dict(estim_lr0=0.0), "estim_lr0"), (dict(d0=-1.0), "d0"), (dict(betas=(1.0, 0.999)), "betas"),
    (dict(eps=0.0), "eps"), (dict(weight_decay=-1.0), "weight_decay"), (dict(growth_rate=0.5), "growth_rate"),
    (dict(learning_rate=-1.0), "learning_rate"), (dict(d0=1e-3, estim_lr0=1e-3), "d0"),
])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.dadapt_adamw(**kwargs)


def test_complex_params_are_refused():
    with pytest.raises(TypeError, match="dadapt_adamw: complex params are not supported"):
        optimizers.dadapt_adamw().init({"w": np.ones(3, np.complex64)})


# dadapt_sgd against dadaptation.DAdaptSGD: (our keywords, DAdaptSGD's keywords).
SGD_CASES = {
    "defaults": ({}, {}),
    "momentum": (dict(momentum=0.9), dict(momentum=0.9)),
    "l2 decay, momentum": (dict(weight_decay=0.1, momentum=0.5), dict(weight_decay=0.1, momentum=0.5)),
    "growth, d0": (dict(growth_rate=1.2, d0=1e-3), dict(growth_rate=1.2, d0=1e-3)),
    "lr, d0, decay": (dict(learning_rate=0.5, d0=1e-2, weight_decay=0.05), dict(lr=0.5, d0=1e-2, weight_decay=0.05)),
}


def _sgd_problem(seed, steps=25):
    """Gradients with a pull back toward the start (so d grows) and a constant drift (so it keeps growing)."""
    rng = np.random.default_rng(seed)
    theta0 = random_tree(rng)
    grads = [jax.tree.map(lambda g, t: 0.5 * g + t + 1.0, gi, theta0) for gi in random_grads(steps, seed=seed + 1)]
    return theta0, grads


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_matches_dadaptation(case):
    ours, theirs = SGD_CASES[case]
    theta0, grads = _sgd_problem(3)
    want = run_torch(lambda ps: DAdaptSGD(ps, **theirs), theta0, grads)
    for g, w in zip(run_params_f64(optimizers.dadapt_sgd(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)
    # float32: x0 - s and the momentum average are a few roundings each, the sums a few dozen terms.
    for g, w in zip(run_params(optimizers.dadapt_sgd(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=2e-5)
    moved = max(np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(want[-1]), jax.tree.leaves(theta0)))
    assert moved > 1e-3  # the estimate grew well past d0's steps


def test_sgd_estimate_is_readable_and_equals_dadaptations():
    theta0, grads = _sgd_problem(7, steps=12)
    tx = optimizers.dadapt_sgd(momentum=0.9, weight_decay=0.01, growth_rate=2.0)
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in jax.tree.leaves(theta0)]
    ref = DAdaptSGD(tensors, momentum=0.9, weight_decay=0.01, growth_rate=2.0)
    with jax.enable_x64(True):  # d0, as the state holds it
        assert float(optimizers.get_hyperparams(tx.init(jax.tree.map(np.asarray, theta0)))["d"]) == 1e-6
    for d, want in estimates_beside_torch(tx, ref, tensors, theta0, grads):
        np.testing.assert_allclose(d, want, rtol=1e-10)
    assert float(d) > 1e-4  # grew from d0 = 1e-6 (at most 2x a step)


def test_sgd_zero_learning_rate_skips_the_step():
    theta0, grads = _sgd_problem(9, steps=6)
    sched = lambda t: jax.numpy.where(t < 2, 0.0, 1.0)  # noqa: E731
    got = run_params_f64(optimizers.dadapt_sgd(sched, momentum=0.5), grads, theta0)
    assert_trees_close(got[0], theta0, rtol=0.0)
    assert_trees_close(got[1], theta0, rtol=0.0)
    # afterwards it is DAdaptSGD started at step 2 (its first gradient norm is step 2's)
    want = run_torch(lambda ps: DAdaptSGD(ps, momentum=0.5), theta0, grads[2:])
    for g, w in zip(got[2:], want):
        assert_trees_close(g, w, rtol=1e-10)


@pytest.mark.parametrize("kwargs,name", [
    (dict(d0=0.0), "d0"), (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(growth_rate=0.5), "growth_rate"),
    (dict(learning_rate=-1.0), "learning_rate"),
])
def test_sgd_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.dadapt_sgd(**kwargs)


def test_sgd_complex_params_are_refused():
    with pytest.raises(TypeError, match="dadapt_sgd: complex params are not supported"):
        optimizers.dadapt_sgd().init({"w": np.ones(3, np.complex64)})


def _dadapt_sgd_reference(theta0, grads, lr=1.0, momentum=0.0, wd=0.0, d0=1e-6, growth=math.inf):
    """D-Adapted SGD (dual averaging with momentum) over a list of leaves, in float64, as dadaptation 3.2
    defines it: the first raw gradient's norm scales every step. Yields the params and the estimate d."""
    x = [np.array(t, np.float64) for t in theta0]
    x0 = [t.copy() for t in x]
    s = [np.zeros_like(t) for t in x]
    d, r, g0 = d0, 0.0, None
    for gs in grads:
        if g0 is None:
            g0 = math.sqrt(sum(float(np.sum(np.square(gi))) for gi in gs))
        g = [np.array(gi, np.float64) + wd * xi for gi, xi in zip(gs, x)]
        delta = d * lr / g0
        r += delta * sum(float(np.sum(gi * si)) for gi, si in zip(g, s))  # old s
        s = [si + delta * gi for si, gi in zip(s, g)]
        d_hat = 2 * r / math.sqrt(sum(float(np.sum(si * si)) for si in s))
        x = [momentum * xi + (1 - momentum) * (x0i - si) for xi, x0i, si in zip(x, x0, s)]
        d = max(d, min(d_hat, d * growth))
        yield [t.copy() for t in x], d


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_matches_float64_transcription(case):
    ours, _ = SGD_CASES[case]
    theta0, grads = _sgd_problem(5)
    treedef = jax.tree.structure(theta0)
    names = dict(learning_rate="lr", momentum="momentum", weight_decay="wd", d0="d0", growth_rate="growth")
    want = [jax.tree.unflatten(treedef, w) for w, _ in
            _dadapt_sgd_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads],
                                  **{names[k]: v for k, v in ours.items()})]
    for g, w in zip(run_params_f64(optimizers.dadapt_sgd(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)
