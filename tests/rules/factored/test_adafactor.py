import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

from optimizers.rules.factored.adafactor import (adafactor, clip_by_block_rms, scale_by_factored_rms, scale_by_param_block_rms,
                                   scale_by_relative_step)

# Matrices above (both dims >= 128) and below the factoring threshold, one with only one dim
# above it, a batch of large matrices, a vector and a scalar.
SHAPES = {"above": (130, 129), "below": (6, 5), "tall": (200, 3), "batch": (2, 129, 128), "vec": (7,), "scalar": ()}
SCALES = [1.0] * 5 + [0.2] * 5 + [3.0] * 5 + [1.0] * 10  # shrinking then growing gradients: clipping on and off


def _grads(steps=25, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, shapes, scale=SCALES[k % len(SCALES)]) for k in range(steps)]


def _params(seed=1):
    theta = random_tree(np.random.default_rng(seed), SHAPES)
    theta["vec"] = np.zeros(7)  # RMS 0: the eps2 floor of the parameter scale
    return theta


def _rms(x):
    return np.sqrt(np.mean(np.square(x)))


def _factored_rms_reference(grads, c, eps1, min_dim):
    """Algorithms 4 (factored, with the paper's row and column *sums*) and 5 (full)."""
    shape = grads[0].shape
    factored = len(shape) >= 2 and min(shape[-2:]) >= min_dim
    R, C, V = np.zeros(shape[:-1]), np.zeros(shape[:-2] + shape[-1:]), np.zeros(shape)
    for t, G in enumerate(grads, start=1):
        beta = 1 - t ** (-c)
        if factored:
            R = beta * R + (1 - beta) * np.sum(G**2 + eps1, axis=-1)
            C = beta * C + (1 - beta) * np.sum(G**2 + eps1, axis=-2)
            V_hat = R[..., :, None] * C[..., None, :] / np.sum(R, axis=-1)[..., None, None]
        else:
            V = beta * V + (1 - beta) * (G**2 + eps1)
            V_hat = V
        yield G / np.sqrt(V_hat)


def _adafactor_reference(theta, grads, lr, b1, d, eps2, min_dim, relative, seen):
    """Section 9's Adafactor: clipping (Section 6), relative step (Section 8), optional momentum."""
    m = np.zeros_like(theta)
    for t, U in enumerate(_factored_rms_reference(grads, 0.8, 1e-30, min_dim), start=1):
        seen.add("factored" if theta.ndim >= 2 and min(theta.shape[-2:]) >= min_dim else "full")
        seen.add("clipped" if _rms(U) > d else "unclipped")
        if eps2 is not None:
            seen.add("eps2" if _rms(theta) < eps2 else "rms(theta)")
        seen.add("rho=lr" if not relative or lr < 1 / np.sqrt(t) else "rho=1/sqrt(t)")
        U_hat = U / max(1.0, _rms(U) / d)
        step = (max(eps2, _rms(theta)) if eps2 is not None else 1.0) * U_hat
        rho = min(lr, 1 / np.sqrt(t)) if relative else lr
        m = b1 * m + (1 - b1) * step if b1 else step
        theta = theta - rho * m
        yield theta


@pytest.mark.parametrize("min_dim", [128, 2])
def test_scale_by_factored_rms_matches_paper(min_dim):
    grads = _grads()
    tx = scale_by_factored_rms(decay_rate=0.8, eps=1e-30, min_dim_size_to_factor=min_dim)
    check_reference(run_updates(tx, grads), grads, lambda gs: _factored_rms_reference(gs, 0.8, 1e-30, min_dim))


CASES = {  # name: (adafactor kwargs, reference lr, b1, d, eps2, relative)
    "defaults (Section 9)": (dict(), 1e-2, None, 1.0, 1e-3, True),
    "relative step": (dict(learning_rate=0.3), 0.3, None, 1.0, 1e-3, True),
    "momentum": (dict(learning_rate=0.3, b1=0.9), 0.3, 0.9, 1.0, 1e-3, True),
    "absolute step (table)": (dict(learning_rate=0.05, relative_step=False), 0.05, None, 1.0, 1e-3, False),
    "d=2, eps2=0.1": (dict(learning_rate=0.3, clipping_threshold=2.0, min_scale=0.1), 0.3, None, 2.0, 0.1, True),
    "no clipping, no scale": (dict(learning_rate=0.05, clipping_threshold=None, multiply_by_parameter_scale=False),
                              0.05, None, np.inf, None, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_adafactor_matches_paper(name):
    kwargs, lr, b1, d, eps2, relative = CASES[name]
    grads, theta0, seen = _grads(), _params(), set()
    got = run_params(adafactor(**kwargs), grads, theta0)
    check_reference(got, grads, lambda th, gs: _adafactor_reference(th, gs, lr, b1, d, eps2, 128, relative, seen),
                    params=theta0)
    assert {"factored", "full"} <= seen
    if name == "relative step":  # every branch of the formula is taken at some step of some leaf
        assert {"clipped", "unclipped", "eps2", "rms(theta)", "rho=lr", "rho=1/sqrt(t)"} <= seen


def test_clip_by_block_rms_and_param_scale():
    grads, theta0 = _grads(seed=2), _params(seed=3)
    got = run_updates(clip_by_block_rms(clipping_threshold=1.5), grads)
    check_reference(got, grads, lambda gs: (g / max(1.0, _rms(g) / 1.5) for g in gs))
    got = run_updates(scale_by_param_block_rms(0.01), grads, params=theta0)
    check_reference(got, grads, lambda th, gs: (max(0.01, _rms(th)) * g for g in gs), params=theta0)
    with pytest.raises(ValueError, match="params"):
        scale_by_param_block_rms().update({"a": jnp.ones(2)}, scale_by_param_block_rms().init({"a": jnp.ones(2)}))


def test_scale_by_relative_step_with_a_schedule():
    grads = random_grads(25, seed=4)
    gamma = lambda t: 0.5 / (1 + 0.1 * t)  # noqa: E731  (read at count t = 0, 1, ...)
    got = run_updates(scale_by_relative_step(gamma), grads)
    check_reference(got, grads, lambda gs: (-min(gamma(k), 1 / np.sqrt(k + 1)) * g for k, g in enumerate(gs)))


TORCH_SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "blocks": [(2, 2, 3), (5,)], "big": (130, 129), "scale": ()}


@pytest.mark.parametrize("lr", [1e-2, 0.3])
def test_matches_torch_with_every_matrix_factored(lr):
    # torch factors every leaf of rank >= 2 over its last two dims: min_dim_size_to_factor=1.
    grads, theta0 = _grads(50, seed=5, shapes=TORCH_SHAPES), random_tree(np.random.default_rng(6), TORCH_SHAPES)
    got = run_params_f64(adafactor(lr, min_dim_size_to_factor=1), grads, theta0)
    want = run_torch(lambda ps: torch.optim.Adafactor(ps, lr=lr, eps=(1e-30, 1e-3)), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_eps1_added_here_but_clamped_in_torch():
    """Gradients near sqrt(eps1): the paper adds eps1 to G^2 (steps shrink), torch clamps (full steps)."""
    grads = [{"v": 1e-20 * np.random.default_rng(k).normal(size=6)} for k in range(3)]
    theta0 = {"v": np.ones(6)}
    ours = run_params_f64(adafactor(), grads, theta0)[0]["v"] - 1
    theirs = run_torch(lambda ps: torch.optim.Adafactor(ps, eps=(1e-30, 1e-3)), theta0, grads)[0]["v"] - 1
    np.testing.assert_allclose(np.abs(theirs), 1e-2, rtol=1e-6)  # |U| = 1: rho * RMS(theta) = 1e-2
    np.testing.assert_allclose(ours, theirs * np.abs(grads[0]["v"]) / np.sqrt(grads[0]["v"] ** 2 + 1e-30), rtol=1e-6)


OPTAX_SHAPES = {k: v for k, v in SHAPES.items() if k != "scalar"}


def _f64_decay(step, c):
    return 1.0 - (jnp.asarray(step, jnp.float64) + 1) ** (-c)


@pytest.mark.parametrize("b1", [None, 0.9])
def test_matches_optax(b1):
    """optax.adafactor(lr) is relative_step=False; its beta2_t is float32 (~3e-9 after 50 steps)."""
    grads, theta0 = _grads(50, seed=7, shapes=OPTAX_SHAPES), random_tree(np.random.default_rng(8), OPTAX_SHAPES)
    with jax.enable_x64(True):  # optax fixes its momentum dtype when built
        ours = adafactor(1e-2, b1=b1, relative_step=False)
        theirs = optax.adafactor(1e-2, momentum=b1, dtype_momentum=jnp.float64)
        # optax.adafactor's own chain, with beta2_t computed in float64:
        body = optax.chain(optax.scale_by_factored_rms(decay_rate_fn=_f64_decay), optax.clip_by_block_rms(1.0),
                           optax.scale_by_learning_rate(1e-2, flip_sign=False), optax.scale_by_param_block_rms(),
                           optax.ema(b1 or 0.0, debias=False, accumulator_dtype=jnp.float64), optax.scale(-1))
    got = run_params_f64(ours, grads, theta0)
    for g, w, x in zip(got, run_params_f64(theirs, grads, theta0), run_params_f64(body, grads, theta0)):
        assert_trees_close(g, w, rtol=1e-8)  # optax's float32 beta2_t
        assert_trees_close(g, x, rtol=1e-10)


def test_momentum_under_a_changing_step_differs_from_optax():
    """optax (like Tensor2Tensor) averages the lr-scaled steps; here the lr multiplies the average."""
    grads, theta0 = _grads(20, seed=10, shapes=OPTAX_SHAPES), random_tree(np.random.default_rng(11), OPTAX_SHAPES)
    lr = lambda t: 1e-2 / (1 + t)  # noqa: E731
    with jax.enable_x64(True):
        theirs = optax.adafactor(lr, momentum=0.9, dtype_momentum=jnp.float64)
    got = run_params_f64(adafactor(lr, b1=0.9, relative_step=False), grads, theta0)[-1]["below"] - theta0["below"]
    want = run_params_f64(theirs, grads, theta0)[-1]["below"] - theta0["below"]
    assert not np.allclose(got, want, rtol=1e-2)


def test_scale_by_factored_rms_matches_optax():
    grads = _grads(30, seed=9, shapes=OPTAX_SHAPES)
    with jax.enable_x64(True):
        got = run_updates(scale_by_factored_rms(), grads, dtype=np.float64)
        want = run_updates(optax.scale_by_factored_rms(decay_rate_fn=_f64_decay), grads, dtype=np.float64)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_factors_the_last_two_dims_where_optax_factors_the_largest():
    params = {"last": jnp.zeros((3, 130, 140)), "middle": jnp.zeros((130, 3, 140))}
    ours, theirs = scale_by_factored_rms().init(params), optax.scale_by_factored_rms().init(params)
    assert ours.v_row["last"].shape == (3, 130) and ours.v_col["last"].shape == (3, 140)
    assert ours.v["middle"].shape == (130, 3, 140) and ours.v_row["middle"].size == 0
    assert theirs.v["middle"].size == 1 and theirs.v_row["middle"].shape == (130, 3)  # dims 0 and 2 factored


def _state_floats(tx, params):
    return sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0)


def test_memory_is_rows_plus_columns():
    params = {"w": jnp.zeros((1024, 512), jnp.float32)}
    assert _state_floats(scale_by_factored_rms(), params) == 1024 + 512
    assert _state_floats(adafactor(), params) == 1024 + 512
    assert _state_floats(adafactor(b1=0.9), params) == 1024 + 512 + 1024 * 512  # the first moment is full size
    assert _state_floats(adafactor(min_dim_size_to_factor=1024), params) == 1024 * 512  # 512 < 1024: not factored


def test_zero_gradients_and_zero_params_give_zero_updates():
    params = {"w": jnp.zeros((130, 130)), "b": jnp.zeros(3), "s": jnp.zeros(())}
    tx = adafactor(b1=0.9)
    state = tx.init(params)
    for _ in range(3):
        u, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))


def test_a_donated_step_runs():
    """No two state leaves share one buffer (a donated step would fail to donate it twice)."""
    import jax
    import jax.numpy as jnp
    import optax

    import optimizers

    params = {"w": jnp.ones((4, 3)), "v": jnp.ones(5), "big": jnp.ones((130, 130))}
    tx = optimizers.adafactor(1e-2)

    def step(p, s):
        u, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    p, s = params, tx.init(params)
    for _ in range(2):
        p, s = step(p, s)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p))


def test_under_inject_hyperparams_in_jit():
    import functools

    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    for fused in (False, True):
        build = functools.partial(adafactor, fused=fused)
        # min_dim_size_to_factor decides the state's shapes: a traced one is refused, by name.
        with pytest.raises(jax.errors.ConcretizationTypeError, match="min_dim_size_to_factor.*static_args"):
            jax.jit(optax.inject_hyperparams(build)(learning_rate=0.1).init)(params)
        # Static, or with init outside jit, every other hyperparameter is traced in the step.
        for tx, init in ((optax.inject_hyperparams(build, static_args="min_dim_size_to_factor"), jax.jit),
                         (optax.inject_hyperparams(build), lambda f: f)):
            tx = tx(learning_rate=0.1, min_dim_size_to_factor=2)
            u, _ = jax.jit(tx.update)(params, init(tx.init)(params), params)
            plain = adafactor(0.1, min_dim_size_to_factor=2)
            want, _ = plain.update(params, plain.init(params), params)
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6)
