"""Adan: adaptive Nesterov momentum from the gradient and its difference, with a proximal weight decay."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, given,
                                             init_hyperparams)
from optimizers.contract.moments import bias_correction, check_eps_root, ema, step_number
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import check_state_dtypes
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, leaf_masks, scale_by_learning_rate
from schedules import ScalarOrSchedule

_FORMS = ("paper", "optax")


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByAdanState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "b3": ..., "eps": ...} (and "eps_root" when given)
    mu: optax.Updates  # m_k, average of the gradients
    delta: optax.Updates  # v_k, average of the gradient differences
    nu: optax.Updates  # n_k, average of |g_k + c (g_k - g_{k-1})|^2
    prev_grad: optax.Updates  # g_{k-1} (the first step uses its own gradient: a difference of 0)


def scale_by_adan(b1: ScalarOrSchedule = 0.98, b2: ScalarOrSchedule = 0.92, b3: ScalarOrSchedule = 0.99,
                  eps: ScalarOrSchedule = 1e-8, eps_root: Optional[ScalarOrSchedule] = None, *,
                  form: str = "paper", mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""Adan's direction (without its weight decay, which :func:`adan` applies).

    With the authors' :math:`\beta`'s (theirs and optax's: the paper's are one minus these),
    :math:`\Delta_k = g_k - g_{k-1}` and :math:`\Delta_1 = 0` (the authors' implementation takes
    :math:`g_0 = g_1`):

    .. math::
        m_k = \beta_1 m_{k-1} + (1-\beta_1) g_k, \quad
        v_k = \beta_2 v_{k-1} + (1-\beta_2) \Delta_k, \quad
        n_k = \beta_3 n_{k-1} + (1-\beta_3) |g_k + c\, \Delta_k|^2,

    .. math::
        u_k = \frac{m_k/(1-\beta_1^k) + c\, v_k/(1-\beta_2^k)}{\sqrt{n_k/(1-\beta_3^k) + \epsilon_{root}} + \epsilon}

    ``form="paper"``: :math:`c = \beta_2` (Algorithm 1's :math:`1 - \beta_2` in the paper's
    convention, and the authors' ``Adan`` and ``pytorch_optimizer.Adan``, with their bias
    corrections). ``form="optax"``: :math:`c = 1 - \beta_2`, as ``optax.scale_by_adan``
    computes it. ``eps_root=None`` adds nothing (optax's ``scale_by_adan`` default is 0).
    ``mu_dtype`` keeps :math:`m, v` and the previous gradient, ``nu_dtype`` :math:`n`, as in
    :func:`scale_by_adam`. Complex params: :math:`n` of :math:`|\cdot|^2`, real.

    .. warning::
        ``optax.scale_by_adan`` and ``optax.adan`` weigh the gradient difference by
        :math:`1-\beta_2` (0.08 at the defaults) where the paper and the authors' code weigh
        it by :math:`\beta_2` (0.92): ``form="optax"`` gives optax's numbers.

    Args:
        b1, b2, b3: :math:`\beta_1, \beta_2, \beta_3 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` inside the root, or ``None``.
        form: ``"paper"`` or ``"optax"``.
        mu_dtype, nu_dtype: the dtypes of :math:`m, v, g_{k-1}` and of :math:`n`, or ``None``.

    References:
        Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
        Optimizing Deep Models", 2022 (TPAMI 2024), Algorithm 1; github.com/sail-sg/Adan.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        check_range("scale_by_adan", name, value, 0.0, 1.0, high_open=True)
    check_range("scale_by_adan", "eps", eps, 0.0, low_open=True)
    check_eps_root("scale_by_adan", eps_root)
    check_state_dtypes("scale_by_adan", mu_dtype, nu_dtype)
    if form not in _FORMS:
        raise ValueError(f"scale_by_adan: form must be one of {_FORMS}, got {form!r}")
    values = given(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleByAdanState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
                                zeros_in(params, mu_dtype), zeros_in(params, nu_dtype, real=True),
                                zeros_in(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        k = step_number(state.count, hp["b1"].dtype)
        c = hp["b2"] if form == "paper" else 1 - hp["b2"]
        first = state.count == 0
        diff = jax.tree.map(lambda g, p: jnp.where(first, 0, widen(g) - widen(p)), updates, state.prev_grad)
        m = ema(updates, state.mu, hp["b1"])
        v = ema(diff, state.delta, hp["b2"])
        n = jax.tree.map(lambda g, d, s: hp["b3"] * widen(s) + (1 - hp["b3"]) * abs2(widen(g) + c * d),
                         updates, diff, state.nu)
        c1, c2, c3 = (bias_correction(hp[b], k) for b in ("b1", "b2", "b3"))
        root = hp.get("eps_root", 0.0)
        out = jax.tree.map(lambda g, a, b, s: store((a / c1 + c * b / c2) / (hp["eps"] + jnp.sqrt(s / c3 + root)),
                                                    g.dtype), updates, m, v, n)
        new = ScaleByAdanState(optax.safe_increment(state.count), hp, store_like(m, state.mu),
                               store_like(v, state.delta), store_like(n, state.nu), store_like(updates, state.prev_grad))
        return out, new

    return transformation("scale_by_adan", init_fn, update_fn)


@declare_state(elementwise=True)
class ProximalStepState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": ..., "weight_decay": ...}


def _proximal_step(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule, mask: MaskOrFn
                   ) -> optax.GradientTransformation:
    r"""Adan's step with its proximal decay: :math:`\theta_k = (\theta_{k-1} - \gamma_k u_k)/(1 + \gamma_k\lambda_k)`,
    as the update :math:`-\gamma_k (u_k + \lambda_k \theta_{k-1})/(1 + \gamma_k \lambda_k)` (:math:`-\gamma_k u_k` on
    the leaves ``mask`` leaves out). The learning rate and the decay are this transform's hyperparameters."""
    check_learning_rate("adan", learning_rate)
    check_range("adan", "weight_decay", weight_decay, 0.0)
    values = dict(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        del params
        return ProximalStepState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adan: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, lam = hp["learning_rate"], hp["weight_decay"]

        def step(u, p, on):
            if not on:
                return (-lr * u).astype(u.dtype)
            return (-lr * (lam * p + u) / (1 + lr * lam)).astype(u.dtype)

        out = jax.tree.map(step, updates, params, leaf_masks(mask, params))
        return out, ProximalStepState(optax.safe_increment(state.count), hp)

    return transformation("adan", init_fn, update_fn)


@declare_optimizer(paper="Xie et al. 2022",
                   update="`m,v,n` of `g`, `Δ=g-g₋`, `g+β₂Δ`; `θ=(θ-γ(m̂+β₂v̂)/(√n̂+ε))/(1+γλ)`",
                   test_kwargs=dict(learning_rate=0.02))
def adan(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.98, b2: ScalarOrSchedule = 0.92,
         b3: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8, eps_root: Optional[ScalarOrSchedule] = None,
         weight_decay: ScalarOrSchedule = 0.0, mask: MaskOrFn = None, *, form: str = "paper",
         no_prox: bool = False, mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""Adan: :func:`scale_by_adan`'s :math:`u_k`, then the paper's proximal weight decay

    .. math::
        \theta_k = \frac{\theta_{k-1} - \gamma_k u_k}{1 + \gamma_k \lambda_k}

    (Algorithm 1, and the authors' default). ``no_prox=True`` (the authors' option of that
    name, ``pytorch_optimizer.Adan(weight_decouple=True)``, optax's): the decoupled decay
    :math:`\theta_k = \theta_{k-1} - \gamma_k (u_k + \lambda_k \theta_{k-1})`. ``mask``:
    the leaves that decay. ``form``, ``eps_root``, ``mu_dtype``, ``nu_dtype``: see
    :func:`scale_by_adan`. No fused kernel: ``adan`` runs its chain.

    .. warning::
        ``optax.adan`` is ``adan(..., eps_root=1e-8, form="optax", no_prox=True)``: it weighs
        the gradient difference by :math:`1-\beta_2`, adds ``eps_root=1e-8`` under the root by
        default, and decays without the proximal division. With the default ``no_prox=False``
        the learning rate and the decay are held by one transform (``get_hyperparams`` reads
        them as usual).

    References:
        Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
        Optimizing Deep Models", 2022 (TPAMI 2024), Algorithm 1; github.com/sail-sg/Adan.
    """
    direction = scale_by_adan(b1, b2, b3, eps, eps_root, form=form, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    if no_prox:
        return optax.chain(direction, add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))
    return optax.chain(direction, _proximal_step(learning_rate, weight_decay, mask))
