"""optax's keywords on our functions: every name accepted, optax's defaults accepted, each new
keyword's numbers against optax (where optax is right) or a float64 reference."""

import inspect

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import optax.contrib
import pytest

import optimizers


def _optax_twin(name):
    """optax's function of the same name (top level, else optax.contrib), or None."""
    for module in (optax, optax.contrib):
        fn = getattr(module, name, None)
        if callable(fn) and not inspect.isclass(fn):
            return fn
    return None


SHARED = sorted(n for n in optimizers.__all__ if callable(getattr(optimizers, n))
                and not inspect.isclass(getattr(optimizers, n)) and _optax_twin(n) is not None)

# What optax requires and gives no default for (the learning rate stays ours: optax's
# ``learning_rate=None`` of adafactor and adadelta means "no scaling", not a value).
REQUIRED = dict(learning_rate=0.1, decay=0.9, threshold=1.0, max_consecutive_errors=3, sync_period=2,
                slow_step_size=0.5, inner=optimizers.sgd(0.1), fast_optimizer=optimizers.sgd(0.1),
                base_optimizer=optimizers.sgd(0.1), optimizer=optimizers.sgd(0.1), adv_optimizer=optimizers.sgd(0.05))
# Shared functions that are not transformations (their keywords are still optax's).
NOT_TRANSFORMS = ["schedule_free_eval_params"]
# Line searches: their update needs value_fn; tests/rules/quasi_newton/test_lbfgs.py steps them with optax's defaults.
NEEDS_VALUE_FN = ["lbfgs", "scale_by_backtracking_linesearch", "scale_by_zoom_linesearch"]


def test_shared_functions_are_found():
    assert len(SHARED) >= 29, SHARED


@pytest.mark.parametrize("name", SHARED)
def test_every_optax_keyword_is_accepted(name):
    ours = inspect.signature(getattr(optimizers, name)).parameters
    theirs = inspect.signature(_optax_twin(name)).parameters
    missing = [p for p in theirs if p not in ours]
    assert not missing, f"optimizers.{name} lacks optax's {missing}"


def _positional(fn):
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p, param in inspect.signature(fn).parameters.items() if param.kind in kinds]


@pytest.mark.parametrize("name", SHARED)
def test_positional_arguments_are_optax_order(name):
    """A call written for optax with positional arguments means the same here: the positional
    parameters are optax's, in optax's order, and every parameter of ours is keyword-only."""
    assert _positional(getattr(optimizers, name)) == _positional(_optax_twin(name))


@pytest.mark.parametrize("name", [n for n in SHARED if n not in NOT_TRANSFORMS + NEEDS_VALUE_FN])
def test_optax_defaults_are_accepted(name):
    """Called with every optax default (and ``REQUIRED`` for what optax requires), ours builds and steps."""
    kwargs = {}
    for p, param in inspect.signature(_optax_twin(name)).parameters.items():
        if p == "learning_rate" or param.default is inspect.Parameter.empty:
            if p in REQUIRED:
                kwargs[p] = REQUIRED[p]
        else:
            kwargs[p] = param.default
    tx = getattr(optimizers, name)(**kwargs)
    params = {"w": jnp.ones((3, 4)), "b": jnp.arange(5.0)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.5, params)
    # value= for the loss-driven rules (polyak_sgd, reduce_on_plateau), obj_fn= for the Hessian estimates (sophia)
    updates, _ = optax.with_extra_args_support(tx).update(grads, tx.init(params), params, value=jnp.float32(1.0),
                                                          obj_fn=_objective)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def _objective(params):
    return sum(jnp.sum(jnp.cos(p)) for p in jax.tree.leaves(params))


SPELLINGS = [  # (factory, ours, optax's, value): both at once is an error
    (lambda **k: optimizers.adafactor(**k), "b1", "momentum", 0.9),
    (lambda **k: optimizers.adafactor(**k), "mu_dtype", "dtype_momentum", jnp.float32),
    (optimizers.clip_by_block_rms, "clipping_threshold", "threshold", 1.0),
    (optimizers.scale_by_factored_rms, "eps", "epsilon", 1e-30),
    (optimizers.scale_by_sm3, "eps_root", "eps", 1e-8),
    (lambda **k: optimizers.apply_if_finite(optimizers.sgd(0.1), **k), "max_consecutive_skips",
     "max_consecutive_errors", 3),
    (lambda **k: optimizers.lookahead(**k), "optimizer", "fast_optimizer", optimizers.sgd(0.1)),
    (lambda **k: optimizers.rprop(0.01, **k), "min_scale", "min_step_size", 1e-4),
    (optimizers.reduce_on_plateau, "threshold", "rtol", 1e-4),
]


@pytest.mark.parametrize("factory, ours, theirs, value", SPELLINGS, ids=[f"{o}/{t}" for _, o, t, _ in SPELLINGS])
def test_one_spelling_at_a_time(factory, ours, theirs, value):
    factory(**{theirs: value})
    with pytest.raises(ValueError, match=f"{ours}.*{theirs}|{theirs}.*{ours}"):
        factory(**{ours: value, theirs: value})


# Each new keyword against optax's own transform: same tree of random gradients, several steps.
# (Not optax's bfloat16 moments: it computes beta * m in bfloat16; see the float64 reference below.)
def _params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}


def _run(tx, steps=8, params=None, state=None):
    params = _params() if params is None else params
    rng = np.random.default_rng(1)
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


AGAINST_OPTAX = {
    "adan(form=optax, no_prox, eps_root, mask)": (
        optimizers.adan(0.1, eps_root=1e-8, weight_decay=1e-2, mask={"w": True, "b": False}, form="optax",
                        no_prox=True),
        optax.adan(0.1, weight_decay=1e-2, mask={"w": True, "b": False})),
    "adabelief(eps_root, nesterov)": (optimizers.adabelief(0.1, eps=1e-6, eps_root=1e-3, nesterov=True),
                                      optax.adabelief(0.1, eps=1e-6, eps_root=1e-3, nesterov=True)),
    "scale_by_yogi(eps_root, initial_accumulator_value)": (
        optimizers.scale_by_yogi(eps_root=1e-3, initial_accumulator_value=0.1, form="optax"),
        optax.scale_by_yogi(eps_root=1e-3, initial_accumulator_value=0.1)),
    "adam(eps_root, nesterov)": (optimizers.adam(0.1, eps_root=1e-3, nesterov=True),
                                 optax.adam(0.1, eps_root=1e-3, nesterov=True)),
    "adamw(eps_root, nesterov)": (optimizers.adamw(0.1, weight_decay=1e-2, eps_root=1e-3, nesterov=True),
                                  optax.adamw(0.1, weight_decay=1e-2, eps_root=1e-3, nesterov=True)),
    "nadam(momentum_decay=None)": (optimizers.nadam(0.1, momentum_decay=None, eps_root=1e-4),
                                   optax.nadam(0.1, eps_root=1e-4)),
    "nadam(nesterov=False)": (optimizers.nadam(0.1, nesterov=False), optax.nadam(0.1, nesterov=False)),
    "amsgrad(bias corrections off)": (
        optimizers.amsgrad(0.1, eps_root=1e-3, bias_correction_mu=False, bias_correction_nu=False),
        optax.amsgrad(0.1, eps_root=1e-3, bias_correction_mu=False, bias_correction_nu=False)),
    "amsgrad(bias_correction_nu=False)": (optimizers.amsgrad(0.1, bias_correction_nu=False),
                                          optax.amsgrad(0.1, bias_correction_nu=False)),
    "radam(eps_root, nesterov)": (optimizers.radam(0.1, b2=0.9, threshold=5.0, eps_root=1e-3, nesterov=True),
                                  optax.radam(0.1, b2=0.9, eps_root=1e-3, nesterov=True)),
    "lamb(eps_root)": (optimizers.lamb(0.1, eps=1e-6, eps_root=1e-3), optax.lamb(0.1, eps_root=1e-3)),
    "novograd(eps_root, mu_dtype)": (optimizers.novograd(0.1, eps=1e-8, eps_root=1e-2),
                                     optax.novograd(0.1, eps=1e-8, eps_root=1e-2)),
    "lion(mu_dtype)": (optimizers.lion(0.1, weight_decay=1e-3, mu_dtype=jnp.bfloat16),
                       optax.lion(0.1, mu_dtype=jnp.bfloat16)),
    "scale_by_lion(smooth)": (optimizers.scale_by_lion(mode="smooth", smooth_beta=2.0),
                              optax.scale_by_lion(mode="smooth", smooth_beta=2.0)),
    "scale_by_lion(refined)": (optimizers.scale_by_lion(mode="refined"), optax.scale_by_lion(mode="refined")),
    "rmsprop(bias_correction)": (optimizers.rmsprop(0.1, decay=0.9, bias_correction=True),
                                 optax.rmsprop(0.1, decay=0.9, eps_in_sqrt=False, bias_correction=True)),
    "rmsprop(centered, bias_correction)": (
        optimizers.rmsprop(0.1, decay=0.9, eps=0.1, eps_in_sqrt=True, centered=True, bias_correction=True),
        optax.rmsprop(0.1, decay=0.9, eps=0.1, centered=True, bias_correction=True)),  # step 1: variance 0
    "adadelta(weight_decay)": (optimizers.adadelta(0.5, weight_decay=0.1, weight_decay_mask={"w": True, "b": False}),
                               optax.adadelta(0.5, weight_decay=0.1, weight_decay_mask={"w": True, "b": False})),
    "adafactor(momentum, weight_decay_rate)": (
        optimizers.adafactor(0.1, momentum=0.9, dtype_momentum=jnp.float32, weight_decay_rate=0.01,
                             weight_decay_mask={"w": True, "b": False}, relative_step=False),
        optax.adafactor(0.1, momentum=0.9, weight_decay_rate=0.01, weight_decay_mask={"w": True, "b": False})),
    "scale_by_factored_rms(epsilon, decay_rate_fn)": (
        optimizers.scale_by_factored_rms(epsilon=1e-3, decay_rate_fn=lambda i, c: jnp.minimum(0.5, 1 - (i + 1.0)**-c)),
        optax.scale_by_factored_rms(epsilon=1e-3, decay_rate_fn=lambda i, c: jnp.minimum(0.5, 1 - (i + 1.0)**-c))),
    "scale_by_sm3(b1, b2, eps)": (optimizers.scale_by_sm3(variant="II", b1=0.9, b2=0.9, eps=1e-8),
                                  optax.scale_by_sm3(b1=0.9, b2=0.9, eps=1e-8)),
    "scale_by_sm3(b2=1)": (optimizers.scale_by_sm3(variant="II", b1=0.5, b2=1.0, eps=1e-8),
                           optax.scale_by_sm3(b1=0.5, b2=1.0, eps=1e-8)),
    "scale_by_trust_ratio(min_norm, eps=0)": (optimizers.scale_by_trust_ratio(eps=0.0, min_norm=2.5),
                                              optax.scale_by_trust_ratio(min_norm=2.5, eps=0.0)),
    "lars(eps=0, masks=True)": (optimizers.lars(0.1, eps=0.0, weight_decay_mask=True, trust_ratio_mask=True),
                                optax.lars(0.1, eps=0.0)),
}


@pytest.mark.parametrize("name", sorted(AGAINST_OPTAX))
def test_new_keyword_matches_optax(name):
    ours, theirs = AGAINST_OPTAX[name]
    for got, want in zip(_run(ours), _run(theirs)):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)  # float32 vs float32, other op orders


def test_scale_by_factored_rms_step_offset_restarts_the_decay():
    """optax's step_offset k: NaN from a fresh state; here beta = 1 - max(t - k, 1)^-c (float64 reference),
    which is optax's once the count has passed k."""
    k, c, eps = 3, 0.8, 1e-30
    params = _params()
    got = _run(optimizers.scale_by_factored_rms(step_offset=k), params=params)
    rng = np.random.default_rng(1)
    v = {key: np.zeros(p.shape) for key, p in params.items()}
    for t, updates in enumerate(got, start=1):
        beta = 1 - max(t - k, 1) ** -c
        grads = {key: rng.normal(size=params[key].shape).astype(np.float32).astype(np.float64)
                 for key in ("b", "w")}  # the tree's leaf order, as _run draws them
        for key in ("b", "w"):
            v[key] = beta * v[key] + (1 - beta) * (grads[key] ** 2 + eps)
            np.testing.assert_allclose(updates[key], grads[key] / np.sqrt(v[key]), rtol=1e-5)
    ours, theirs = optimizers.scale_by_factored_rms(step_offset=k), optax.scale_by_factored_rms(step_offset=k)
    late = lambda tx: tx.init(params)._replace(count=jnp.int32(k + 5))  # noqa: E731
    for g, w in zip(_run(ours, 3, state=late(ours)), _run(theirs, 3, state=late(theirs))):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            np.testing.assert_allclose(a, b, rtol=2e-5)


def test_rprop_absolute_step_sizes_are_scales_times_the_learning_rate():
    lr = 0.01
    want = _run(optimizers.rprop(lr, min_scale=1e-2, max_scale=3.0))
    got = _run(optimizers.rprop(lr, min_step_size=1e-4, max_step_size=0.03))
    transform = _run(optimizers.scale_by_rprop(learning_rate=lr, min_step_size=1e-4, max_step_size=0.03))
    for g, t, w in zip(got, transform, want):
        for a, b, c in zip(jax.tree.leaves(g), jax.tree.leaves(t), jax.tree.leaves(w)):
            np.testing.assert_allclose(a, c, rtol=1e-6)
            np.testing.assert_allclose(-b, c, rtol=1e-6)
    with pytest.raises(ValueError, match="min_step_size"):
        optimizers.rprop(lambda t: 0.01, min_step_size=1e-4)


def test_reduce_on_plateau_tolerances():
    """rtol alone is threshold_mode="rel", atol alone "abs"; both: improves iff x < b - (rtol |b| + atol)."""
    values = [5.0, 4.9, 4.85, 4.84, 4.839, 4.8389, 4.8388, 4.83, 4.829, 4.8289, 4.8288, 4.8287] * 2

    def scales(tx):
        state, out = tx.init({"x": jnp.zeros(())}), []
        for v in values:
            _, state = tx.update({"x": jnp.ones(())}, state, value=jnp.float32(v))
            out.append(float(state.scale))
        return out

    assert scales(optimizers.reduce_on_plateau(patience=1, rtol=1e-3)) == \
        scales(optimizers.reduce_on_plateau(patience=1, threshold=1e-3))
    assert scales(optimizers.reduce_on_plateau(patience=1, atol=5e-3)) == \
        scales(optimizers.reduce_on_plateau(patience=1, threshold=5e-3, threshold_mode="abs"))
    best, bad, want, scale = np.inf, 0, [], 1.0
    for v in values:  # float64 reference of the combined criterion, patience 1, factor 0.1
        if v < best - (1e-3 * abs(best) if np.isfinite(best) else 0.0) - 2e-3:
            best, bad = v, 0
        else:
            bad += 1
        if bad > 1:  # a reduction of more than eps=1e-8
            scale, bad = scale * 0.1 if scale * 0.9 > 1e-8 else scale, 0
        want.append(scale)
    np.testing.assert_allclose(scales(optimizers.reduce_on_plateau(patience=1, rtol=1e-3, atol=2e-3)), want,
                               rtol=1e-6)


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("accumulator_dtype", [None, jnp.bfloat16])
def test_ema_is_optax_ema(debias, accumulator_dtype):
    """``ema`` is optax's: the updates' moving average, bias-corrected by default, its state in
    ``accumulator_dtype``; step for step on random gradients (and not the weights' average)."""
    rng = np.random.default_rng(7)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), _params()) for _ in range(6)]
    ours, theirs = (f(0.8, debias=debias, accumulator_dtype=accumulator_dtype) for f in (optimizers.ema, optax.ema))
    s_ours, s_theirs = ours.init(_params()), theirs.init(_params())
    # A bfloat16 state: optax multiplies it by the decay in bfloat16 (a weakly typed float), ours in
    # float32; the two differ by bfloat16's rounding (2^-8) of that product.
    tol = dict(rtol=1e-6, atol=1e-7) if accumulator_dtype is None else dict(rtol=2e-2, atol=2e-2)
    for g in grads:
        u_ours, s_ours = ours.update(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), u_ours, u_theirs)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.dtype, b.dtype), s_ours.ema, s_theirs.ema)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), **tol),
                     s_ours.ema, s_theirs.ema)


def test_adam_bfloat16_first_moment_matches_a_float64_reference():
    """mu_dtype=bfloat16: the update from the float32 moment of this step, m kept rounded to bfloat16."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(10, 6, 7)).astype(np.float32)
    tx = optimizers.adam(lr, mu_dtype=jnp.bfloat16)
    params = jnp.zeros((6, 7), jnp.float32)
    state, update = tx.init(params), jax.jit(tx.update)
    m, v = np.zeros((6, 7)), np.zeros((6, 7))
    for t, g in enumerate(grads.astype(np.float64), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        want = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        m = m.astype(ml_dtypes.bfloat16).astype(np.float64)  # what the state keeps
        got, state = update(jnp.asarray(g, jnp.float32), state, params)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # float32 arithmetic vs float64
        np.testing.assert_array_equal(np.asarray(state[0].mu, np.float64), m)
        assert state[0].mu.dtype == jnp.bfloat16 and state[0].nu.dtype == jnp.float32
