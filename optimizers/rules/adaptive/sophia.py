"""Sophia: momentum over a clipped diagonal-Hessian preconditioner, the Hessian estimated every k steps."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.registry import declare_state
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule

_FORMS = ("paper", "optax")


class HutchinsonState(NamedTuple):
    """The state of :func:`hutchinson_estimator_diag_hessian`: the key of its next Rademacher draw."""

    key: jax.Array  # uint32 raw key (jax.random.PRNGKey) of the next draw


def hutchinson_estimator_diag_hessian(random_seed: Optional[jax.Array] = None
                                      ) -> optax.GradientTransformationExtraArgs:
    r"""Hutchinson's estimate of the Hessian diagonal: :math:`\hat h = u \odot (\nabla^2 f)\, u`.

    :math:`u` has independent Rademacher (:math:`\pm 1`) entries, drawn as
    ``optax.contrib.hutchinson_estimator_diag_hessian`` draws them (the key split at every call,
    ``optax.tree.random_like`` of the second half), so the same key gives optax's estimate.
    ``update(updates, state, params, obj_fn=f)`` ignores ``updates`` and needs ``params`` and the
    objective ``f(params) -> scalar``; :math:`\nabla^2 f\, u` is a forward-over-reverse product.

    Args:
        random_seed: a raw ``jax.random.PRNGKey``, or ``None`` for ``PRNGKey(0)`` (optax's).

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", 1990; Liu et al. 2023 (Sophia-H), Algorithm 1.
    """
    def init_fn(params):
        del params
        return HutchinsonState(jnp.asarray(jax.random.PRNGKey(0) if random_seed is None else random_seed))

    def update_fn(updates, state, params=None, *, obj_fn=None, **extra):
        del updates, extra
        if params is None:
            raise ValueError("hutchinson_estimator_diag_hessian: update needs params, got params=None")
        if obj_fn is None:
            raise ValueError("hutchinson_estimator_diag_hessian: update needs the objective, update(..., obj_fn=f)")
        key, subkey = jax.random.split(state.key)
        signs = optax.tree.random_like(subkey, params, jax.random.rademacher, dtype=jnp.float32)
        signs = optax.tree.cast(signs, optax.tree.dtype(params, "lowest"))
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        return jax.tree.map(lambda h, u: h * u, hvp, signs), HutchinsonState(key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@declare_state(nonnegative=(), elementwise=True)
class SophiaState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1", "b2", "eps", "gamma"} (and "clip_threshold" when given)
    mu: optax.Updates  # m_t
    nu: optax.Updates  # h_t, the EMA of the Hessian-diagonal estimates (may be negative)
    hessian_fn_state: Any  # the estimator's state


def _win_rate(updates, threshold):
    """The fraction of coordinates not clipped (the authors' diagnostic)."""
    n = sum(u.size for u in jax.tree.leaves(updates))
    return sum(jnp.sum(jnp.abs(u) < threshold) for u in jax.tree.leaves(updates)) / max(n, 1)


def scale_by_sophia(b1: ScalarOrSchedule = 0.965, b2: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8,
                    gamma: ScalarOrSchedule = 0.01, clip_threshold: Optional[ScalarOrSchedule] = 1.0,
                    update_interval: int = 10, hessian_diagonal_fn=None, mu_dtype=None, verbose: bool = False,
                    print_win_rate_every_n_steps: int = 0, *, form: str = "paper", nu_dtype=None
                    ) -> optax.GradientTransformationExtraArgs:
    r"""Sophia's direction: the momentum over the clipped diagonal-Hessian EMA.

    ``form="paper"`` (Algorithm 3 of the paper; the authors' ``SophiaG`` step):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        h_t = \begin{cases} \beta_2 h_{t-k} + (1-\beta_2)\hat h_t & t \equiv 1 \pmod k \\
                            h_{t-1} & \text{else} \end{cases}, \quad
        u_t = \mathrm{clip}\Big(\frac{m_t}{\max(\gamma h_t, \epsilon)}, -\rho, \rho\Big)

    with :math:`\hat h_t` the estimator's output (Hutchinson's by default) at the step's params,
    :math:`k` = ``update_interval``, :math:`\rho` = ``clip_threshold`` (1 in the paper; ``None``:
    no clip) and no bias correction of :math:`m`. A negative :math:`h` gives :math:`\epsilon`:
    the step is then :math:`\pm\rho` (sign momentum). ``form="optax"``
    (``optax.contrib.scale_by_sophia``): :math:`m` bias-corrected, :math:`\hat m_t =
    m_t/(1-\beta_1^t)`, and the step uses :math:`h_{t-1}`, the refresh counting from the next
    step. The refresh runs inside the compiled step under ``lax.cond`` (compiled once).

    Complex params are refused (``TypeError``). The update needs the estimator's arguments:
    ``update(grads, state, params, obj_fn=f)``
    with ``f(params) -> loss`` for Hutchinson's (``optax.chain`` forwards them).

    .. warning::
        optax's ``scale_by_sophia`` and ``sophia`` bias-correct :math:`m` and use the Hessian
        EMA of the previous refresh (``form="optax"`` gives theirs). The authors' training loop
        refreshes :math:`h` after the :math:`k`-th step, at the updated params and on the
        next batch; one ``update`` call sees only the step's params, so here (as in the
        paper's Algorithm 3) the refresh is at the params of step :math:`t \equiv 1 \pmod k`.
        The authors' ``SophiaG`` adds :math:`10^{-15}` to :math:`\gamma h` where the paper
        (and this) takes :math:`\max(\gamma h, \epsilon)`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)` (per refresh: over steps it acts like :math:`1-(1-\beta_2)/k`).
        eps: :math:`\epsilon > 0`.
        gamma: :math:`\gamma > 0`.
        clip_threshold: :math:`\rho > 0`, or ``None`` for no clip.
        update_interval: :math:`k \ge 1`.
        hessian_diagonal_fn: a transform returning the Hessian-diagonal estimate
            (``None``: :func:`hutchinson_estimator_diag_hessian`).
        mu_dtype: the dtype of :math:`m`, or ``None`` (the params').
        nu_dtype: the dtype of :math:`h`, or ``None`` (the params').
        verbose: print the fraction of unclipped coordinates every
            ``print_win_rate_every_n_steps`` steps (``jax.debug.print``).
        print_win_rate_every_n_steps: that period (0: never).
        form: ``"paper"`` or ``"optax"``.

    References:
        Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
        Language Model Pre-training", ICLR 2024, Algorithm 3 (and the authors' ``SophiaG``).
    """
    owner = "scale_by_sophia"
    check_range(owner, "b1", b1, 0.0, 1.0, high_open=True)
    check_range(owner, "b2", b2, 0.0, 1.0, high_open=True)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "gamma", gamma, 0.0, low_open=True)
    if clip_threshold is not None:
        check_range(owner, "clip_threshold", clip_threshold, 0.0, low_open=True)
    check_range(owner, "update_interval", update_interval, 1)
    check_range(owner, "print_win_rate_every_n_steps", print_win_rate_every_n_steps, 0)
    if isinstance(update_interval, (int, float)) and int(update_interval) != update_interval:
        raise ValueError(f"{owner}: update_interval must be an int >= 1, got {update_interval!r}")
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    if form not in _FORMS:
        raise ValueError(f"{owner}: form must be one of {_FORMS}, got {form!r}")
    estimator = optax.with_extra_args_support(hessian_diagonal_fn or hutchinson_estimator_diag_hessian())
    values = given(b1=b1, b2=b2, eps=eps, gamma=gamma, clip_threshold=clip_threshold)
    optax_form = form == "optax"
    k = update_interval  # a number, or an array under optax.inject_hyperparams

    def init_fn(params):
        reject_complex(owner, params, "its step clips and compares real coordinates; split complex leaves "
                                      "into real pairs")
        return SophiaState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
                           zeros_in(params, nu_dtype), estimator.init(params))

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t = optax.safe_increment(state.count).astype(hp["b1"].dtype)
        m = jax.tree.map(lambda g, mu: hp["b1"] * widen(mu) + (1 - hp["b1"]) * widen(g), updates, state.mu)

        def refresh(est_state, nu):
            h, est_state = estimator.update(updates, est_state, params, **extra)
            nu = jax.tree.map(lambda e, n: (hp["b2"] * widen(n) + (1 - hp["b2"]) * widen(e)).astype(n.dtype), h, nu)
            return est_state, nu

        est_state, nu = jax.lax.cond(state.count % k == 0, refresh, lambda s, n: (s, n),
                                     state.hessian_fn_state, state.nu)
        used = state.nu if optax_form else nu
        c1 = 1 - hp["b1"] ** t if optax_form else 1.0

        def direction(mm, h):
            u = mm / c1 / jnp.maximum(hp["gamma"] * widen(h), hp["eps"])
            return u if clip_threshold is None else jnp.clip(u, -hp["clip_threshold"], hp["clip_threshold"])

        out = jax.tree.map(direction, m, used)
        if verbose and clip_threshold is not None:
            rate = _win_rate(out, hp["clip_threshold"])
            jax.lax.cond((print_win_rate_every_n_steps > 0)
                         & (optax.safe_increment(state.count) % jnp.maximum(print_win_rate_every_n_steps, 1) == 0),
                         lambda: jax.debug.print("Sophia optimizer win rate: {}", rate), lambda: None)
        out = jax.tree.map(lambda u, g: store(u, g.dtype), out, updates)
        return out, SophiaState(optax.safe_increment(state.count), hp, store_like(m, state.mu), nu, est_state)

    return transformation(owner, init_fn, update_fn, extra_args=True)


def sophia(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.965, b2: ScalarOrSchedule = 0.99,
           eps: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 1e-4, weight_decay_mask: MaskOrFn = None,
           gamma: ScalarOrSchedule = 0.01, clip_threshold: Optional[ScalarOrSchedule] = 1.0,
           update_interval: int = 10, hessian_diagonal_fn=None, mu_dtype=None, verbose: bool = False,
           print_win_rate_every_n_steps: int = 0, *, form: str = "paper", nu_dtype=None
           ) -> optax.GradientTransformationExtraArgs:
    r"""Sophia: :math:`\theta_t = \theta_{t-1} - \eta_t (u_t + \lambda \theta_{t-1})` with
    :func:`scale_by_sophia`'s :math:`u_t` (decoupled decay, as the paper's Algorithm 3).

    ``update(grads, state, params, obj_fn=lambda p: loss(p, batch))``: the objective of the step's
    batch, for the Hessian estimate (``optax.chain`` forwards it). Keywords as
    ``optax.contrib.sophia``'s; ``form``, ``nu_dtype``: see :func:`scale_by_sophia`.

    .. warning::
        ``optax.contrib.sophia`` is ``form="optax"`` (bias-corrected momentum, the previous
        refresh's Hessian). The paper and the authors' ``SophiaG`` apply the decay before the
        step, :math:`\theta(1-\eta\lambda)`: the same update.

    References:
        Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
        Language Model Pre-training", ICLR 2024, Algorithm 3.
    """
    return optax.chain(
        scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, hessian_diagonal_fn, mu_dtype,
                        verbose, print_win_rate_every_n_steps, form=form, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate))
