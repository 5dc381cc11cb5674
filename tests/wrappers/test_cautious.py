import jax
import numpy as np
import optax
import pytest
from helpers import assert_close, assert_trees_close, random_grads, random_tree, run_params, run_params_f64, run_torch

import optimizers


def _mask(u, g, normalize="count", direction=False):
    """Liang et al. (2024): keep the coordinates whose step moves against the gradient, rescaled per tensor."""
    agree = (u * g > 0) if direction else (u * g < 0)
    phi = agree.astype(np.float64)
    if normalize == "count":
        phi = phi * phi.size / (phi.sum() + 1)
    elif normalize == "mean":
        phi = phi / max(phi.mean(), 1e-3)
    return u * phi


def _cautious_adam_reference(theta, grads, lr, b1=0.9, b2=0.999, eps=1e-8, normalize="count", kept=None):
    """C-Adam in float64: Adam's step, masked against the gradient. ``kept`` collects the mask."""
    m = np.zeros_like(theta, np.float64)
    v = np.zeros_like(m)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        if kept is not None:
            kept.extend(np.ravel(u * g < 0))
        theta = theta + _mask(u, g, normalize)
        yield theta


def _grads(seed, steps=22):
    """Gradients whose sign flips often (the momentum then disagrees with them): both sides of the mask."""
    return random_grads(steps, seed=seed)


@pytest.mark.parametrize("normalize", ["count", "mean", "none"])
def test_cautious_adam_matches_paper(normalize):
    grads, theta0 = _grads(1), random_tree(np.random.default_rng(2))
    got = run_params(optimizers.cautious(optimizers.adam(0.01), normalize=normalize), grads, theta0)
    kept = []
    for i, (start, seq) in enumerate(zip(jax.tree.leaves(theta0), zip(*[jax.tree.leaves(g) for g in grads]))):
        want = list(_cautious_adam_reference(start, list(seq), 0.01, normalize=normalize, kept=kept))
        for step, w in enumerate(want):
            assert_close(jax.tree.leaves(got[step])[i], w)
    assert {True, False} <= set(kept)  # both sides of the mask


def test_direction_form_is_the_papers_c_adamw():
    """cautious(scale_by_adam(), direction=True) then decay and lr: C-AdamW (the decay unmasked)."""
    grads, theta0 = _grads(3), random_tree(np.random.default_rng(4))
    tx = optax.chain(optimizers.cautious(optimizers.scale_by_adam(), direction=True),
                     optimizers.add_decayed_weights(0.1), optimizers.scale_by_learning_rate(0.01))
    got = run_params(tx, grads, theta0)

    def reference(theta, gs):
        m = v = np.zeros_like(theta)
        for t, g in enumerate(gs, start=1):
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            d = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            theta = theta - 0.01 * (_mask(d, g, direction=True) + 0.1 * theta)
            yield theta

    for i, (start, seq) in enumerate(zip(jax.tree.leaves(theta0), zip(*[jax.tree.leaves(g) for g in grads]))):
        for step, w in enumerate(reference(start, list(seq))):
            assert_close(jax.tree.leaves(got[step])[i], w)


COMPOSED = {  # declared optimizers the wrapper must compose with
    "adam": lambda: optimizers.adam(0.01),
    "adopt": lambda: optimizers.adopt(0.01),
    "ademamix": lambda: optimizers.ademamix(0.01, b3=0.99),
    "simplified_ademamix": lambda: optimizers.simplified_ademamix(0.002, 0.9, 0.99, 1.0),
    "madgrad": lambda: optimizers.madgrad(0.01),
    "lion": lambda: optimizers.lion(0.001),
    "sgd": lambda: optimizers.sgd(0.05, momentum=0.9, nesterov=True),
    "clip, then adam (optax.chain)": lambda: optax.chain(optax.clip_by_global_norm(1.0), optimizers.adam(0.01)),
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_wrapper_masks_the_inner_update_of_each_optimizer(name):
    """At every step the wrapper's update is the inner optimizer's (same state, same params), masked."""
    grads, theta0 = _grads(5, steps=20), random_tree(np.random.default_rng(6))
    tx, ctx = COMPOSED[name](), optimizers.cautious(COMPOSED[name]())
    with jax.enable_x64(True):
        cast = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)  # noqa: E731
        params = cast(theta0)
        state, cstate = tx.init(params), ctx.init(params)

        @jax.jit
        def step(params, state, cstate, g):
            u, state = tx.update(g, state, params)
            cu, cstate = ctx.update(g, cstate, params)
            return u, cu, state, cstate

        for g in grads:
            u, cu, state, cstate = step(params, state, cstate, cast(g))
            for a, b, gl in zip(jax.tree.leaves(cu), jax.tree.leaves(u), jax.tree.leaves(g)):
                np.testing.assert_allclose(a, _mask(np.asarray(b), gl), rtol=1e-12, atol=1e-300)
            params = optax.apply_updates(params, cu)
        assert jax.tree.structure(cstate.inner_state) == jax.tree.structure(state)


def test_composes_inside_optax_chain_and_inject_hyperparams():
    grads, theta0 = _grads(7, steps=21), random_tree(np.random.default_rng(8))
    inner = optax.inject_hyperparams(optimizers.adam)(learning_rate=0.01)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optimizers.cautious(inner))
    got = run_params(tx, grads, theta0)
    for i, (start, seq) in enumerate(zip(jax.tree.leaves(theta0), zip(*[jax.tree.leaves(g) for g in grads]))):
        for step, w in enumerate(_cautious_adam_reference(start, list(seq), 0.01)):
            assert_close(jax.tree.leaves(got[step])[i], w)
    theta32 = jax.tree.map(lambda x: np.asarray(x, np.float32), theta0)
    assert float(optimizers.get_hyperparams(tx.init(theta32))["learning_rate"]) == pytest.approx(0.01)


TORCH = {  # pytorch_optimizer's cautious=True, where it masks the whole step against the gradient's sign
    "adopt": (lambda: optimizers.cautious(optimizers.adopt(1e-2, 0.8, 0.99)),
              lambda ps: __import__("pytorch_optimizer").ADOPT(ps, lr=1e-2, betas=(0.8, 0.99), cautious=True,
                                                                foreach=False)),
    "lion": (lambda: optimizers.cautious(optimizers.lion(1e-3, 0.9, 0.99, weight_decay=0.0)),
             lambda ps: __import__("pytorch_optimizer").Lion(ps, lr=1e-3, betas=(0.9, 0.99), cautious=True,
                                                              foreach=False)),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_matches_pytorch_optimizer_cautious(name):
    ours, theirs = TORCH[name]
    grads, theta0 = _grads(9, steps=21), random_tree(np.random.default_rng(10))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_torch(theirs, theta0, grads)):
        assert_trees_close(g, w, rtol=1e-10)


def test_complex_params_use_the_real_pairs_sign():
    """Re(u conj(g)) < 0 keeps a complex coordinate: u = -g i (orthogonal) is dropped, u = -g kept."""
    g = {"z": np.array([1 + 1j, 2 - 1j], np.complex64)}
    u = {"z": np.array([-(1 + 1j), 1j * (2 - 1j)], np.complex64)}
    tx = optimizers.cautious(optax.GradientTransformation(lambda p: optax.EmptyState(),
                                                         lambda _, s, p=None: (u, s)), normalize="none")
    out, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(out["z"], [-(1 + 1j), 0.0])


@pytest.mark.parametrize("kwargs, name", [(dict(normalize="sum"), "normalize"), (dict(direction=1), "direction")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.cautious(optimizers.adam(0.1), **kwargs)
