"""The CPU kernels of ``fused=True`` (one pass: adam, adamw, amsgrad, adamax, adax, nadam, radam, lion,
adagrad, amos, adadelta, rmsprop, rprop, sgd, funnelled_sgdm, novograd, sm3-II; two: sm3-I, lamb, lars; three:
adafactor) and update_and_apply.

The fused transforms are also in the conformance suite (and so in the sharding, checkpoint,
non-finite, counter, precision and property tests). Here: that the kernel runs, that it is
the published update step by step (float64 NumPy and torch.optim references), that it equals
the unfused chain, that it works in place, and that it steps aside where it does not apply.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import assert_trees_close, run_torch
from test_adadelta import _adadelta_reference
from test_adafactor import _adafactor_reference
from test_amos import _amos_reference
from test_adam import _adam_reference, _adamax_reference, _amsgrad_reference
from test_adax import _adax_reference
from test_funnelled_sgdm import _funnelled_reference
from test_lion import _lion_reference
from test_momentum import _sgd_reference
from test_nadam import _nadam_reference
from test_radam import _radam_reference
from test_rmsprop import _rmsprop_reference
from test_rprop import _rprop_reference
from test_sm3 import _sm3_per_dim_reference
from test_trust_ratio import _lamb_reference, _lars_reference

import optimizers
import schedules
from optimizers.fused import ffi as _fused

# Leaves across the kernel's 65,536-element chunks, a scalar, an empty one and a single element;
# for Adafactor a matrix factored by default in two chunks of rows, and a batch of matrices.
SHAPES = {"big": (2 * 65536 + 3,), "mat": (300, 7), "s": (), "empty": (0,), "one": (1,), "blocks": [(2, 3), (5,)],
          "wide": (260, 300), "batch": (3, 4, 5)}
FUSED = {
    "adam": lambda fused, **kw: optimizers.adam(0.01, fused=fused, **kw),
    "adamw": lambda fused, **kw: optimizers.adamw(0.01, weight_decay=0.1, fused=fused, **kw),
    "adamw masked": lambda fused, **kw: optimizers.adamw(
        0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p), fused=fused, **kw),
    "amsgrad": lambda fused, **kw: optimizers.amsgrad(0.01, fused=fused, **kw),
    "amsgrad raw": lambda fused, **kw: optimizers.amsgrad(0.01, max_over="raw", fused=fused, **kw),
    "adamax": lambda fused, **kw: optimizers.adamax(0.01, fused=fused, **kw),
    "adax": lambda fused, **kw: optimizers.adax(0.01, fused=fused, **kw),
    "adax raw sqrt": lambda fused, **kw: optimizers.adax(0.01, b1=0.8, b2=0.01, eps=1e-6, eps_on_raw_sqrt=True,
                                                         fused=fused, **kw),
    "nadam": lambda fused, **kw: optimizers.nadam(0.01, fused=fused, **kw),
    "radam": lambda fused, **kw: optimizers.radam(0.01, fused=fused, **kw),
    "radam torch": lambda fused, **kw: optimizers.radam(0.01, threshold=5.0, eps_on_raw_sqrt=True, fused=fused, **kw),
    "lamb": lambda fused, **kw: optimizers.lamb(0.01, weight_decay=0.1, fused=fused, **kw),
    "lamb masked": lambda fused, **kw: optimizers.lamb(
        0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
        trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.size > 1, p), min_param_norm=0.5, max_param_norm=50.0,
        fused=fused, **kw),
    "lars": lambda fused, **kw: optimizers.lars(0.1, fused=fused, **kw),
    "lars masked nesterov": lambda fused, **kw: optimizers.lars(
        0.1, weight_decay=0.01, weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p), eps=1e-8,
        trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.size > 1, p), nesterov=True, fused=fused, **kw),
    "lion": lambda fused, **kw: optimizers.lion(0.01, weight_decay=0.1, fused=fused, **kw),
    "adagrad": lambda fused, **kw: optimizers.adagrad(0.1, initial_accumulator_value=0.1, fused=fused, **kw),
    "funnelled_sgdm": lambda fused, **kw: optimizers.funnelled_sgdm(0.01, gamma_p=0.1, fused=fused, **kw),
    "adadelta": lambda fused, **kw: optimizers.adadelta(1.0, rho=0.9, eps=1e-6, fused=fused, **kw),
    "amos": lambda fused, **kw: optimizers.amos(0.05, eta=lambda p: jax.tree.map(lambda x: 0.5 + x.ndim, p),
                                                fused=fused, **kw),
    "amos momentum": lambda fused, **kw: optimizers.amos(0.05, eta=1.0, beta=0.99, c_coef=0.5, d_coef=0.1,
                                                         momentum=0.9, fused=fused, **kw),
    "novograd": lambda fused, **kw: optimizers.novograd(0.01, fused=fused, **kw),
    "novograd decay": lambda fused, **kw: optimizers.novograd(0.01, b1=0.95, b2=0.98, eps=1e-3, weight_decay=0.01,
                                                              fused=fused, **kw),
    "rmsprop": lambda fused, **kw: optimizers.rmsprop(0.01, fused=fused, **kw),
    "rmsprop centered momentum": lambda fused, **kw: optimizers.rmsprop(0.01, centered=True, momentum=0.9,
                                                                        fused=fused, **kw),
    "rmsprop eps_in_sqrt nesterov": lambda fused, **kw: optimizers.rmsprop(
        0.01, decay=0.9, eps=1e-6, eps_in_sqrt=True, momentum=0.5, nesterov=True, fused=fused, **kw),
    "rprop": lambda fused, **kw: optimizers.rprop(0.01, fused=fused, **kw),
    "sm3": lambda fused, **kw: optimizers.sm3(0.3, fused=fused, **kw),
    "sm3 II momentum": lambda fused, **kw: optimizers.sm3(0.3, momentum=0.9, eps_root=1e-8, variant="II", fused=fused,
                                                          **kw),
    "rprop torch": lambda fused, **kw: optimizers.rprop(0.01, form="torch", fused=fused, **kw),
    "sgd": lambda fused, **kw: optimizers.sgd(0.05, fused=fused, **kw),
    "adafactor": lambda fused, **kw: optimizers.adafactor(0.01, fused=fused, **kw),
    "adafactor momentum": lambda fused, **kw: optimizers.adafactor(
        0.05, b1=0.9, relative_step=False, clipping_threshold=2.0, min_dim_size_to_factor=2, fused=fused, **kw),
    "adafactor every matrix": lambda fused, **kw: optimizers.adafactor(0.01, min_dim_size_to_factor=1, fused=fused,
                                                                       **kw),
    "adafactor plain": lambda fused, **kw: optimizers.adafactor(
        0.05, clipping_threshold=None, multiply_by_parameter_scale=False, fused=fused, **kw),
    "sgd momentum": lambda fused, **kw: optimizers.sgd(0.05, momentum=0.9, fused=fused, **kw),
    "sgd nesterov decay": lambda fused, **kw: optimizers.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                                                             fused=fused, **kw),
}


def _tree(seed, scale=1.0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.normal(size=s)).astype(np.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def _grads(steps, seed=1):
    return [_tree(seed + k) for k in range(steps)]


def _apply_steps(tx, params, grads):
    """Params after each step, stepped with update + apply_updates (the Flax TrainState way)."""
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append(params)
    return out, state


def _in_place_steps(tx, params, grads):
    """Params after each step of update_and_apply, params and state donated."""
    params = jax.tree.map(jnp.array, params)
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


RUNS = {"update": _apply_steps, "in place": _in_place_steps}


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


@pytest.mark.parametrize("name", FUSED)
def test_the_kernel_runs(name):
    tx, params = FUSED[name](True), _tree(0)
    state = tx.init(params)
    target = "optimizers_" + name.split()[0].removesuffix("w")
    assert f'custom_call_target="{target}"' in _hlo(tx.update, params, state, params)
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    text = step.lower(params, state, params).compile().as_text()
    assert text.count(f'custom_call_target="{target}"') == -(-8 // _fused._LEAVES_PER_CALL)  # 8 leaves with elements
    tiny = re.compile(r"= \w+\[0?\](\{0?\})? copy\(")  # an empty leaf or a scalar
    copies = [line for line in text.splitlines() if " copy(" in line and not tiny.search(line)]
    assert not copies  # in place under donation (XLA may copy the empty leaf, 0 bytes, or a scalar count)


# One configuration per alias: where a test exercises the backend (how leaves are split into calls,
# when a transform falls back to its chain), not each kernel's options (test_equals_the_unfused_chain).
BASE = [n for n in FUSED if " " not in n]


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", BASE)
def test_leaves_split_over_several_calls(name, run, monkeypatch):
    """Two leaves a call (the first, a scalar, an empty leaf and uneven rest included): the
    results of one call over all the leaves, bit for bit, and the same state."""
    params, grads = _tree(0), _grads(3)
    monkeypatch.setattr(_fused, "_LEAVES_PER_CALL", 1000)
    whole, whole_state = RUNS[run](FUSED[name](True), params, grads)
    monkeypatch.setattr(_fused, "_LEAVES_PER_CALL", 2)
    tx = FUSED[name](True)
    split, split_state = RUNS[run](tx, params, grads)
    text = _hlo(tx.update, params, tx.init(params), params)
    target = "optimizers_" + name.split()[0].removesuffix("w")
    assert text.count(f'custom_call_target="{target}"') == 4  # 8 leaves with elements
    for a, b in zip(jax.tree.leaves((split[-1], split_state)), jax.tree.leaves((whole[-1], whole_state))):
        np.testing.assert_array_equal(a, b)


def test_a_many_leaf_tree_runs_in_calls_of_a_few_leaves():
    """A 70-leaf tree: calls of ``_LEAVES_PER_CALL`` leaves, in place under donation, the unfused
    chain's results."""
    shapes = {f"w{i}": (i % 5 + 1, 3) if i % 3 else (i + 1,) for i in range(70)}
    params, grads = _tree(0, shapes=shapes), [_tree(1 + k, shapes=shapes) for k in range(5)]
    tx = optimizers.adamw(0.01, weight_decay=0.1, fused=True)
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    text = step.lower(params, tx.init(params), params).compile().as_text()
    assert text.count('custom_call_target="optimizers_adam"') == -(-70 // _fused._LEAVES_PER_CALL) > 1
    assert " copy(" not in text.replace("s32[] copy(", "")  # no copies but of the scalar counts
    fused, fused_state = _in_place_steps(tx, params, grads)
    plain, plain_state = _in_place_steps(optimizers.adamw(0.01, weight_decay=0.1), params, grads)
    assert_trees_close(fused[-1], plain[-1], rtol=1e-6)
    assert_trees_close(fused_state, plain_state, rtol=1e-6)


def test_donated_step_writes_the_same_memory():
    tx = optimizers.adam(1e-3, fused=True)
    params = {"w": jnp.ones(1 << 18)}
    state = jax.tree.map(jnp.array, tx.init(params))
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    before = params["w"].unsafe_buffer_pointer(), state[0].mu["w"].unsafe_buffer_pointer()
    params, state = step(params, state, {"w": jnp.full(1 << 18, 0.5)})
    assert (params["w"].unsafe_buffer_pointer(), state[0].mu["w"].unsafe_buffer_pointer()) == before
    np.testing.assert_allclose(params["w"], 1 - 1e-3, rtol=1e-6)  # Adam's first step is lr * sign(g)


def _decoupled(directions, theta, lr, wd):
    """theta_t = theta_{t-1} - lr (u_t + wd theta_{t-1}) for each direction u_t."""
    for u in directions:
        theta = theta - lr * (u + wd * theta)
        yield theta


def _adagrad_directions(grads, v0, eps):
    """AdaGrad: v_t = v_{t-1} + g_t^2, u_t = g_t / (sqrt(v_t) + eps)."""
    v = np.full_like(grads[0], v0)
    for g in grads:
        v = v + g**2
        yield g / (np.sqrt(v) + eps)


def _adafactor_params(theta, grads, *args):
    """Adafactor's reference (an empty leaf stays as it is: it has no RMS)."""
    return iter([theta] * len(grads)) if theta.size == 0 else _adafactor_reference(theta, grads, *args, set())


def _rmsprop_params(theta, grads, lr, rho, eps, eps_in_sqrt, centered, mu, nesterov):
    """RMSProp with momentum: b_t = mu b_{t-1} + u_t, theta_t = theta_{t-1} - lr (b_t or u_t + mu b_t)."""
    b = np.zeros_like(theta)
    for u in _rmsprop_reference(grads, rho, eps, eps_in_sqrt, centered):
        b = mu * b + u
        theta = theta - lr * (u + mu * b if nesterov else b)
        yield theta


def _novograd_params(theta, grads, lr, b1, b2, eps, wd):
    """NovoGrad (Algorithm 1; no eps at the first step) on the params it moves: theta_t = theta_{t-1} - lr m_t."""
    m, v = np.zeros_like(theta), 0.0
    for t, g in enumerate(grads, start=1):
        norm2 = np.sum(g**2)
        v = norm2 if t == 1 else b2 * v + (1 - b2) * norm2
        den = np.sqrt(v) + (0.0 if t == 1 else eps)
        m = b1 * m + g / (den if den > 0 else 1.0) + wd * theta
        theta = theta - lr * m
        yield theta


def _sm3_params(theta, grads, lr, variant, eps, b):
    """SM3 (Algorithms 1, 2) with optax's momentum m_t = b m_{t-1} + (1-b) u_t: theta_t = theta_{t-1} - lr m_t."""
    m = np.zeros_like(theta)
    for u in _sm3_per_dim_reference(grads, variant, eps):
        m = b * m + (1 - b) * u
        theta = theta - lr * m
        yield theta


def _adam_params(theta, grads, lr, wd):
    return _decoupled(_adam_reference(grads, 0.9, 0.999, 1e-8), theta, lr, wd)


REFERENCES = {  # per leaf: (theta0, grads, masked in) -> params after each step, float64
    "adam": lambda t, gs, on: _adam_params(t, gs, 0.01, 0.0),
    "adamw": lambda t, gs, on: _adam_params(t, gs, 0.01, 0.1),
    "adamw masked": lambda t, gs, on: _adam_params(t, gs, 0.01, 0.1 if on else 0.0),
    "amsgrad": lambda t, gs, on: _decoupled(_amsgrad_reference(gs, 0.9, 0.999, 1e-8, "corrected"), t, 0.01, 0.0),
    "amsgrad raw": lambda t, gs, on: _decoupled(_amsgrad_reference(gs, 0.9, 0.999, 1e-8, "raw"), t, 0.01, 0.0),
    "adamax": lambda t, gs, on: _decoupled(_adamax_reference(gs, 0.9, 0.999, 1e-8), t, 0.01, 0.0),
    "adax": lambda t, gs, on: _decoupled(_adax_reference(gs, 0.9, 1e-4, 1e-8), t, 0.01, 0.0),
    "adax raw sqrt": lambda t, gs, on: _decoupled(_adax_reference(gs, 0.8, 0.01, 1e-6, True), t, 0.01, 0.0),
    "nadam": lambda t, gs, on: _decoupled(_nadam_reference(gs, 0.9, 0.999, 1e-8, 0.004), t, 0.01, 0.0),
    "radam": lambda t, gs, on: _decoupled(_radam_reference(gs, 0.9, 0.999, 1e-8), t, 0.01, 0.0),
    "radam torch": lambda t, gs, on: _decoupled(_radam_reference(gs, 0.9, 0.999, 1e-8, 5.0, True), t, 0.01, 0.0),
    "lamb": lambda t, gs, on: _lamb_reference(t, gs, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.0, np.inf, True, True),
    "lamb masked": lambda t, gs, on: _lamb_reference(t, gs, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.5, 50.0, on, t.size > 1),
    "lars": lambda t, gs, on: _lars_reference(t, gs, 0.1, 0.9, False, 0.0, 0.001, 0.0, True, True),
    "lars masked nesterov": lambda t, gs, on: _lars_reference(t, gs, 0.1, 0.9, True, 0.01, 0.001, 1e-8, on,
                                                              t.size > 1),
    "lion": lambda t, gs, on: _decoupled(_lion_reference(gs, 0.9, 0.99), t, 0.01, 0.1),
    "adagrad": lambda t, gs, on: _decoupled(_adagrad_directions(gs, 0.1, 1e-10), t, 0.1, 0.0),
    "adadelta": lambda t, gs, on: _decoupled(_adadelta_reference(gs, 0.9, 1e-6), t, 1.0, 0.0),
    "amos": lambda t, gs, on: _amos_reference(t, gs, 0.05, 0.5 + t.ndim, 0.999, 0.25, 0.25, ()),
    "amos momentum": lambda t, gs, on: _amos_reference(t, gs, 0.05, 1.0, 0.99, 0.5, 0.1, (), momentum=0.9),
    "novograd": lambda t, gs, on: _novograd_params(t, gs, 0.01, 0.9, 0.25, 1e-8, 0.0),
    "novograd decay": lambda t, gs, on: _novograd_params(t, gs, 0.01, 0.95, 0.98, 1e-3, 0.01),
    "rmsprop": lambda t, gs, on: _rmsprop_params(t, gs, 0.01, 0.99, 1e-8, False, False, 0.0, False),
    "rmsprop centered momentum": lambda t, gs, on: _rmsprop_params(t, gs, 0.01, 0.99, 1e-8, False, True, 0.9, False),
    "rmsprop eps_in_sqrt nesterov": lambda t, gs, on: _rmsprop_params(t, gs, 0.01, 0.9, 1e-6, True, False, 0.5, True),
    "sm3": lambda t, gs, on: _sm3_params(t, gs, 0.3, "I", 0.0, 0.0),
    "sm3 II momentum": lambda t, gs, on: _sm3_params(t, gs, 0.3, "II", 1e-8, 0.9),
    "rprop": lambda t, gs, on: _decoupled(_rprop_reference(gs, 1.2, 0.5, 1e-4, 5e3, "table"), t, 0.01, 0.0),
    "rprop torch": lambda t, gs, on: _decoupled(_rprop_reference(gs, 1.2, 0.5, 1e-4, 5e3, "torch"), t, 0.01, 0.0),
    "sgd": lambda t, gs, on: _sgd_reference(t, gs, 0.05, 0.0, False, 0.0),
    "adafactor": lambda t, gs, on: _adafactor_params(t, gs, 0.01, None, 1.0, 1e-3, 128, True),
    "adafactor momentum": lambda t, gs, on: _adafactor_params(t, gs, 0.05, 0.9, 2.0, 1e-3, 2, False),
    "adafactor every matrix": lambda t, gs, on: _adafactor_params(t, gs, 0.01, None, 1.0, 1e-3, 1, True),
    "adafactor plain": lambda t, gs, on: _adafactor_params(t, gs, 0.05, None, np.inf, None, 128, True),
    "sgd momentum": lambda t, gs, on: _sgd_reference(t, gs, 0.05, 0.9, False, 0.0),
    "sgd nesterov decay": lambda t, gs, on: _sgd_reference(t, gs, 0.05, 0.9, True, 0.01),
}


def _funnelled_params(leaves, grads, eta, mu, beta, gamma_p, gamma_s):
    """Per step, every leaf's params: theta_t = theta_{t-1} - s_t u_t (one scale for the whole tree)."""
    for steps in _funnelled_reference(grads, eta, mu, beta, gamma_p, gamma_s):
        leaves = [theta - step for theta, step in zip(leaves, steps)]
        yield leaves


WHOLE_TREE_REFERENCES = {  # (theta0 leaves, grads as lists of leaves) -> the leaves after each step
    "funnelled_sgdm": lambda ls, gs: _funnelled_params(ls, gs, 0.01, 0.9, 0.9, 0.1, 1e-3),
}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", FUSED)
def test_matches_the_published_update(name, run):
    """Ten steps against the float64 formula; float32 rounding of a few operations per step
    stays inside 2e-5 of each leaf's scale (as for the unfused aliases)."""
    params, grads = _tree(0), _grads(10)
    got, _ = RUNS[run](FUSED[name](True), params, grads)
    leaves = jax.tree.leaves(params)
    if name in WHOLE_TREE_REFERENCES:
        wants = WHOLE_TREE_REFERENCES[name]([x.astype(np.float64) for x in leaves],
                                            [[x.astype(np.float64) for x in jax.tree.leaves(g)] for g in grads])
        wants = list(zip(*wants))  # per leaf, its params after each step
    for i, theta0 in enumerate(leaves):
        seq = [jax.tree.leaves(g)[i].astype(np.float64) for g in grads]
        if name in WHOLE_TREE_REFERENCES:
            want = wants[i]
        else:
            want = list(REFERENCES[name](theta0.astype(np.float64), seq, theta0.ndim > 1))
        for step, w in enumerate(want):
            g = np.asarray(jax.tree.leaves(got[step])[i], np.float64)
            scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * scale)


TORCH = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "amsgrad raw": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=0.01),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=0.01),
    "radam torch": lambda ps: torch.optim.RAdam(ps, lr=0.01),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1, eps=1e-10),
    "adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.9, eps=1e-6),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-8),
    "rmsprop centered momentum": lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-8, centered=True,
                                                                momentum=0.9),
    "rprop torch": lambda ps: torch.optim.Rprop(ps, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),
    "sgd momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adafactor every matrix": lambda ps: torch.optim.Adafactor(ps, lr=0.01, eps=(1e-30, 1e-3)),
    "sgd nesterov decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
}


@pytest.mark.parametrize("name", TORCH)
def test_matches_torch(name):
    """torch.optim in float64 against the in-place float32 step, 20 steps (float32 tolerance)."""
    shapes = {"w": (4097,), "m": (30, 20)}
    params, grads = _tree(3, shapes=shapes), [_tree(40 + s, shapes=shapes) for s in range(20)]
    want = run_torch(TORCH[name], params, grads)
    got, _ = _in_place_steps(FUSED[name](True), params, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=2e-5)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", FUSED)
def test_equals_the_unfused_chain(name, run):
    """Same formulas, same order of float32 operations: within a few roundings after 10 steps,
    and the same state (tree, dtypes, counts and hyperparameters exactly)."""
    params, grads = _tree(0), _grads(10)
    fused, fused_state = RUNS[run](FUSED[name](True), params, grads)
    plain, plain_state = RUNS[run](FUSED[name](False), params, grads)
    assert jax.tree.structure(fused_state) == jax.tree.structure(plain_state)
    for a, b in zip(jax.tree.leaves(fused_state), jax.tree.leaves(plain_state)):
        assert a.dtype == b.dtype and a.shape == b.shape
    assert optimizers.get_hyperparams(fused_state) == optimizers.get_hyperparams(plain_state)
    assert_trees_close(fused[-1], plain[-1], rtol=1e-6)
    assert_trees_close(fused_state, plain_state, rtol=1e-6)


def test_schedules_and_set_hyperparams():
    """Scheduled hyperparameters are evaluated as in the chain; a new learning rate set in the
    state takes effect without recompiling."""
    lr, decay = schedules.cosine(0.05, 20), lambda t: 0.01 + 0.001 * t
    b1 = lambda t: 0.9 - 0.01 * jnp.minimum(t, 10)  # noqa: E731
    params, grads = _tree(0), _grads(8)
    for make in (lambda f: optimizers.adamw(lr, b1=b1, weight_decay=decay, fused=f),
                 lambda f: optimizers.sgd(lr, momentum=lambda t: 0.5 + 0.02 * t, weight_decay=decay, fused=f),
                 lambda f: optimizers.adafactor(lr, b1=b1, fused=f)):
        fused, state = _in_place_steps(make(True), params, grads)
        plain, plain_state = _in_place_steps(make(False), params, grads)
        assert_trees_close(fused[-1], plain[-1], rtol=1e-6)
        assert optimizers.get_hyperparams(state) == optimizers.get_hyperparams(plain_state)

    tx, traces = optimizers.adam(0.01, fused=True), []

    def step(p, s, g):
        traces.append(1)
        return optimizers.update_and_apply(tx, g, s, p)

    step = jax.jit(step)
    p, s = step(params, tx.init(params), grads[0])
    frozen, _ = step(p, optimizers.set_hyperparams(s, learning_rate=0.0), grads[1])
    assert len(traces) == 1
    assert_trees_close(frozen, p, rtol=0)


# Small leaves (the fallback does not depend on sizes; bfloat16 is slow on XLA:CPU), one factored by default.
SMALL = {"mat": (30, 7), "s": (), "empty": (0,), "one": (1,), "blocks": [(2, 3), (5,)], "square": (128, 128)}


@pytest.mark.filterwarnings("ignore:.*fused=True runs the unfused chain:UserWarning")  # on purpose (test_backend.py)
@pytest.mark.parametrize("dtype", ["bfloat16", "complex64"])
@pytest.mark.parametrize("name", BASE)
def test_other_dtypes_run_the_unfused_chain(name, dtype):
    if dtype == "complex64" and name.startswith(("lion", "rprop", "funnelled_sgdm")):
        pytest.skip("refuses complex params (test_complex)")
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), _tree(0, shapes=SMALL))
    grads = [jax.tree.map(lambda x: jnp.asarray(x, dtype), _tree(1 + k, shapes=SMALL)) for k in range(3)]
    tx = FUSED[name](True)
    assert "custom_call" not in jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
    fused, _ = _apply_steps(tx, params, grads)
    plain, _ = _apply_steps(FUSED[name](False), params, grads)
    for a, b in zip(jax.tree.leaves(fused[-1]), jax.tree.leaves(plain[-1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.filterwarnings("ignore:.*fused=True runs the unfused chain:UserWarning")  # on purpose (test_backend.py)
def test_float64_runs_the_unfused_chain():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(np.float64), _tree(0))
        grads = [jax.tree.map(lambda x: x.astype(np.float64), g) for g in _grads(3)]
        tx = optimizers.adamw(0.01, fused=True)
        assert "custom_call" not in _hlo(tx.update, params, tx.init(params), params)
        fused, _ = _in_place_steps(tx, params, grads)
        plain, _ = _in_place_steps(optimizers.adamw(0.01), params, grads)
        assert_trees_close(fused[-1], plain[-1], rtol=0)


def test_vmap_over_a_batch_of_models():
    tx = optimizers.adamw(0.01, fused=True)
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *[_tree(s, shapes={"w": (1000,), "b": (3,)}) for s in range(4)])
    grads = jax.tree.map(lambda x: jnp.cos(3 * x), batch)
    step = jax.vmap(lambda p, g: optimizers.update_and_apply(tx, g, tx.init(p), p))
    got, _ = step(batch, grads)
    for k in range(4):
        one = jax.tree.map(lambda x: x[k], batch)
        want, _ = optimizers.update_and_apply(tx, jax.tree.map(lambda x: x[k], grads), tx.init(one), one)
        assert_trees_close(jax.tree.map(lambda x: x[k], got), want, rtol=0)


def test_update_and_apply_of_any_transform_is_update_then_apply():
    params = {**_tree(0, shapes={"w": (10, 3), "b": (3,)}), "step": jnp.int32(7)}
    grads = {**_tree(1, shapes={"w": (10, 3), "b": (3,)}), "step": np.zeros((), jax.dtypes.float0)}
    tx = optimizers.lamb(0.01)
    state = tx.init(params)
    new, new_state = optimizers.update_and_apply(tx, grads, state, params)
    updates, want_state = tx.update(grads, state, params)
    assert new["step"] is params["step"]  # integer params are kept
    assert_trees_close({k: new[k] for k in "wb"}, optax.apply_updates({k: params[k] for k in "wb"},
                                                                      {k: updates[k] for k in "wb"}), rtol=0)
    assert_trees_close(new_state, want_state, rtol=0)


def test_mismatched_trees_are_named():
    tx = optimizers.adam(0.01, fused=True)
    params = _tree(0, shapes={"w": (4, 3)})
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(4, 4\)"):
        optimizers.update_and_apply(tx, {"w": jnp.ones((4, 4))}, tx.init(params), params)


def test_fused_funnelled_sgdm_gains_over_the_whole_range_of_exp():
    """The kernel's vectorized exp (Cephes' expf) against XLA's, exponents from -120 to 95: the
    gains agree within float32 rounding and overflow to inf alike (below exp's normal range
    both give at most the smallest normal float)."""
    n = 4001
    params, first = {"w": np.zeros(n, np.float32)}, {"w": np.ones(n, np.float32)}
    second = {"w": np.linspace(-1.12, 0.88, n, dtype=np.float32)}  # the exponent is 107.5 x this
    gains = []
    for fused in (True, False):
        tx = optimizers.funnelled_sgdm(1e-3, beta=0.0, gamma_p=107.5, gamma_s=0.0, fused=fused)
        update = jax.jit(tx.update)
        state = update(first, tx.init(params), params)[1]  # m = 1, the gains still 1
        gains.append(np.asarray(update(second, state, params)[1][0].gain["w"]))
    assert np.isinf(gains[1]).sum() > 100 and (gains[1] < np.finfo(np.float32).tiny).sum() > 100
    np.testing.assert_array_equal(np.isinf(gains[0]), np.isinf(gains[1]))
    finite = np.isfinite(gains[1])
    np.testing.assert_allclose(gains[0][finite], gains[1][finite], rtol=3e-7, atol=np.finfo(np.float32).tiny)


@pytest.mark.parametrize("granularity", ["leaf", "last_axis", lambda leaf: (0,)])
def test_fused_amos_needs_a_slot_per_entry(granularity):
    with pytest.raises(ValueError, match="amos: fused=True needs granularity='element'"):
        optimizers.amos(0.1, eta=1.0, granularity=granularity, fused=True)


def test_a_missing_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*no-such-compiler"):
        _fused._build(tmp_path / "kernels.so")
    assert not os.listdir(tmp_path)  # nothing half-written left behind


FLAT = {  # flat_state=True: the moments as one flat array each
    "adam": lambda flat: optimizers.adam(0.01, fused=True, flat_state=flat),
    "adamw masked": lambda flat: optimizers.adamw(0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p), fused=True, flat_state=flat),
    "sgd nesterov decay": lambda flat: optimizers.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                                                      fused=True, flat_state=flat),
    "sgd": lambda flat: optimizers.sgd(0.05, fused=True, flat_state=flat),
    "amsgrad raw": lambda flat: optimizers.amsgrad(0.01, max_over="raw", fused=True, flat_state=flat),
    "lion": lambda flat: optimizers.lion(0.01, weight_decay=0.1, fused=True, flat_state=flat),
    "adamax": lambda flat: optimizers.adamax(0.01, fused=True, flat_state=flat),
    "adax raw sqrt": lambda flat: optimizers.adax(0.01, b2=0.01, eps_on_raw_sqrt=True, fused=True, flat_state=flat),
    "funnelled_sgdm": lambda flat: optimizers.funnelled_sgdm(0.01, gamma_p=0.1, fused=True, flat_state=flat),
    "nadam": lambda flat: optimizers.nadam(0.01, fused=True, flat_state=flat),
    "radam": lambda flat: optimizers.radam(0.01, fused=True, flat_state=flat),
    "adagrad": lambda flat: optimizers.adagrad(0.1, initial_accumulator_value=0.1, fused=True, flat_state=flat),
    "adadelta": lambda flat: optimizers.adadelta(1.0, rho=0.9, eps=1e-6, fused=True, flat_state=flat),
    "rprop torch": lambda flat: optimizers.rprop(0.01, form="torch", fused=True, flat_state=flat),
    "rmsprop centered momentum": lambda flat: optimizers.rmsprop(0.01, centered=True, momentum=0.9, fused=True,
                                                                 flat_state=flat),
    "novograd decay": lambda flat: optimizers.novograd(0.01, weight_decay=0.01, fused=True, flat_state=flat),
    "lamb masked": lambda flat: optimizers.lamb(
        0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
        trust_ratio_mask=lambda p: jax.tree.map(lambda x: x.size > 1, p), fused=True, flat_state=flat),
    "lars nesterov": lambda flat: optimizers.lars(0.1, weight_decay=0.01, nesterov=True, fused=True, flat_state=flat),
    "amos": lambda flat: optimizers.amos(0.01, eta=0.5, fused=True, flat_state=flat),
    "amos momentum": lambda flat: optimizers.amos(0.01, eta=lambda p: jax.tree.map(lambda x: 0.1 * x.ndim, p),
                                                  momentum=0.9, fused=True, flat_state=flat),
}
FLAT_FIELDS = ("mu", "nu", "nu_max", "trace", "sum_of_squares", "delta_nu", "step_size", "prev_grad", "gain", "grad_avg",
               "v", "b", "ema")


def _flattened(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", FLAT)
def test_flat_state_is_the_tree_state_concatenated(name, run):
    """The same kernel on the same numbers: params bit-identical after 10 steps, and each flat
    buffer the concatenation of the tree form's leaves (so the tree form's float64 and torch
    references hold for it too)."""
    params, grads = _tree(0), _grads(10)
    flat, flat_state = RUNS[run](FLAT[name](True), params, grads)
    tree, tree_state = RUNS[run](FLAT[name](False), params, grads)
    assert_trees_close(flat[-1], tree[-1], rtol=0)
    compared = 0
    for link, tree_link in zip(flat_state, tree_state):
        for field, value in zip(getattr(link, "_fields", ()), link):
            if field in FLAT_FIELDS and not (name.startswith("novograd") and field == "nu"):  # one scalar per leaf
                assert value.shape == (sum(x.size for x in jax.tree.leaves(params)),)
                np.testing.assert_array_equal(np.asarray(value), _flattened(getattr(tree_link, field)))
                compared += 1
    total = sum(x.size for x in jax.tree.leaves(params))
    assert compared == sum(x.shape == (total,) for x in jax.tree.leaves(flat_state))  # every per-parameter buffer
    assert compared or name == "sgd"
    assert optimizers.get_hyperparams(flat_state) == optimizers.get_hyperparams(tree_state)


def test_flat_state_is_updated_in_place_with_fewer_buffers():
    tx, params = FLAT["adam"](True), _tree(0)
    state = jax.tree.map(jnp.array, tx.init(params))
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(tx.init(params))) and state[0].mu.ndim == 1
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p), donate_argnums=(0, 1))
    text = step.lower(params, state, params).compile().as_text()
    assert text.count('custom_call_target="optimizers_adam"') == 1
    assert not [line for line in text.splitlines() if " copy(" in line and "[0]" not in line]
    before = state[0].mu.unsafe_buffer_pointer(), state[0].nu.unsafe_buffer_pointer()
    params = jax.tree.map(jnp.array, params)
    _, state = step(params, state, _tree(1))
    assert (state[0].mu.unsafe_buffer_pointer(), state[0].nu.unsafe_buffer_pointer()) == before


@pytest.mark.filterwarnings("ignore:.*fused=True runs the unfused chain:UserWarning")  # on purpose (test_backend.py)
def test_flat_state_runs_the_unfused_chain_where_the_kernel_does_not_apply():
    with jax.enable_x64(True):  # float64 hyperparameters: the chain, on the unflattened state
        params, grads = _tree(0), _grads(3)
        flat, flat_state = _apply_steps(FLAT["adamw masked"](True), params, grads)
        tree, tree_state = _apply_steps(FLAT["adamw masked"](False), params, grads)
        assert "custom_call" not in _hlo(FLAT["adamw masked"](True).update, params, flat_state, params)
        # the same chain; XLA fuses it with the slices of the flat buffers: a rounding apart
        assert_trees_close(flat[-1], tree[-1], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(flat_state[0].nu), _flattened(tree_state[0].nu), rtol=1e-6)


def test_flat_state_errors():
    with pytest.raises(ValueError, match="adam: flat_state=True needs fused=True"):
        optimizers.adam(0.01, flat_state=True)
    with pytest.raises(ValueError, match=r"sgd: flat_state=True needs float32 params.*\['b'\] of dtype bfloat16"):
        optimizers.sgd(0.1, momentum=0.9, fused=True, flat_state=True).init(
            {"a": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16)})
    tx = FLAT["adam"](True)
    with pytest.raises(ValueError, match="mu"):  # a state built for other params
        tx.update({"w": jnp.ones(4)}, tx.init({"w": jnp.ones(5)}), {"w": jnp.ones(4)})
