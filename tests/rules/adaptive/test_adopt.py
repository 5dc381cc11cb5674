import jax
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, check_reference, random_tree, run_params, run_params_f64, run_torch, run_updates

import optimizers


def _adopt_reference(grads, b1, b2, eps, clip=lambda t: t**0.25, nesterov=False, clipped=None):
    """Algorithm 2 of Taniguchi et al. (2024), as the authors' code runs it: step 1 sets v = g^2 and
    moves nothing; then n = clip(g / max(sqrt(v_prev), eps), c(t)), m = b1 m + (1 - b1) n, v updated
    after. ``clip=None``: no clipping. ``clipped`` collects whether each element was clipped."""
    m = np.zeros_like(grads[0], np.float64)
    v = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads, start=1):
        if t == 1:
            v = g * g
            yield np.zeros_like(m)
            continue
        n = g / np.maximum(np.sqrt(v), eps)
        if clip is not None:
            c = clip(t)
            if clipped is not None:
                clipped.extend(np.ravel(np.abs(n) > c))
            n = np.minimum(np.maximum(n, -c), c)
        m = b1 * m + (1 - b1) * n
        yield b1 * m + (1 - b1) * n if nesterov else m
        v = b2 * v + (1 - b2) * g * g


def _grads(seed, steps=22):
    """Small then large gradients (the normalised ones exceed t^(1/4): both sides of the clipping)."""
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda g, k=k: g * (0.1 if k < 6 else 3.0 if k < 10 else 1.0), random_tree(rng))
            for k in range(steps)]


CASES = {  # b1, b2, eps, use_clipping, nesterov, form
    "defaults": (0.9, 0.9999, 1e-6, True, False, "paper"),
    "no clipping": (0.9, 0.99, 1e-6, False, False, "paper"),
    "nesterov, eps floor": (0.8, 0.9, 0.05, True, True, "paper"),
    "optax form": (0.9, 0.99, 1e-6, True, False, "optax"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_adopt_matches_paper(case):
    b1, b2, eps, use_clipping, nesterov, form = CASES[case]
    clip = (lambda t: t**0.25) if form == "paper" else (lambda t: (t - 1) ** 0.25)
    clip = clip if use_clipping else None
    grads = _grads(1)
    # the betas as the float32 state holds them: 1 - 0.9999 in float32 is exact but 1.7e-4 off 1e-4
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    tx = optimizers.scale_by_adopt(b1, b2, eps, nesterov=nesterov, use_clipping=use_clipping, form=form)
    got = run_updates(tx, grads)
    check_reference(got, grads, lambda gs: _adopt_reference(gs, b1, b2, eps, clip, nesterov))
    if use_clipping:
        clipped = []
        for seq in zip(*[jax.tree.leaves(g) for g in grads]):
            list(_adopt_reference(list(seq), b1, b2, eps, clip, nesterov, clipped))
        assert {True, False} <= set(clipped)  # both sides of the clipping


def test_eps_floor_takes_both_sides():
    """max(sqrt(v), eps): zero-gradient coordinates of step 1 are divided by eps, the others by sqrt(v)."""
    g1 = {"w": np.array([0.0, 2.0], np.float32)}
    g2 = {"w": np.array([1e-3, 1.0], np.float32)}
    tx = optimizers.scale_by_adopt(b1=0.5, eps=0.1, use_clipping=False)
    got = run_updates(tx, [g1, g2], params=g1)
    np.testing.assert_allclose(got[0]["w"], [0.0, 0.0])
    np.testing.assert_allclose(got[1]["w"], [0.5 * 1e-3 / 0.1, 0.5 * 1.0 / 2.0], rtol=1e-6)


def test_adopt_params_match_paper_with_schedule():
    grads, theta0 = _grads(2), random_tree(np.random.default_rng(3))
    lr = lambda count: 0.01 / (1 + 0.1 * count)  # noqa: E731

    def reference(theta, gs):
        for k, u in enumerate(_adopt_reference(gs, 0.9, float(np.float32(0.9999)), 1e-6)):
            theta = theta - lr(k) * u
            yield theta

    check_reference(run_params(optimizers.adopt(lr), grads, theta0), grads, reference, params=theta0)


OPTAX_PAIRS = {
    "adopt": (lambda: optimizers.adopt(0.01, 0.8, 0.99, 1e-6, form="optax"),
              lambda: optax.contrib.adopt(0.01, 0.8, 0.99, 1e-6)),
    "adopt(nesterov, no clipping)": (
        lambda: optimizers.adopt(0.01, 0.8, 0.99, 1e-3, nesterov=True, use_clipping=False, form="optax"),
        lambda: optax.contrib.adopt(0.01, 0.8, 0.99, 1e-3, nesterov=True, use_clipping=False)),
    "scale_by_adopt(clip_value_fn)": (
        lambda: optimizers.scale_by_adopt(0.9, 0.9, clip_value_fn=lambda c: 0.5 + 0.1 * c, form="optax"),
        lambda: optax.contrib.scale_by_adopt(0.9, 0.9, clip_value_fn=lambda c: 0.5 + 0.1 * c)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_optax_form_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = _grads(4), random_tree(np.random.default_rng(5))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


def test_paper_form_differs_from_optax():
    grads, theta0 = _grads(6), random_tree(np.random.default_rng(7))
    ours = run_params_f64(optimizers.adopt(0.01), grads, theta0)[-1]
    theirs = run_params_f64(optax.contrib.adopt(0.01), grads, theta0)[-1]
    assert not np.allclose(jax.tree.leaves(ours)[0], jax.tree.leaves(theirs)[0], rtol=1e-6)


@pytest.mark.parametrize("use_clipping", [True, False])
def test_paper_form_matches_pytorch_optimizer(use_clipping):
    """pytorch_optimizer.ADOPT: the authors' step (clip at t^(1/4), t from 1; step 1 only sets v)."""
    from pytorch_optimizer import ADOPT

    grads, theta0 = _grads(8), random_tree(np.random.default_rng(9))
    clip = (lambda t: t**0.25) if use_clipping else None
    theirs = run_torch(lambda ps: ADOPT(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, clip_lambda=clip, foreach=False),
                       theta0, grads)
    ours = run_params_f64(optimizers.adopt(1e-2, 0.8, 0.99, 1e-6, use_clipping=use_clipping), grads, theta0)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-10)


@pytest.mark.parametrize("kwargs, name", [(dict(clip_value_fn=-0.5), "clip_value_fn"), (dict(form="torch"), "form"),
                                          (dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(eps=0.0), "eps")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.adopt(0.1, **kwargs)
