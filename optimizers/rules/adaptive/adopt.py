"""ADOPT: Adam whose gradient is normalised by the second moment of the steps before it."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.moments import check_betas
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_FORMS = ("paper", "optax")


def _quarter_power(step):
    return step**0.25


@declare_state(nonnegative=("nu",), elementwise=True)
class ScaleByAdoptState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t (real, non-negative)


def clip_components(x, bound):
    """``x`` clipped to ``[-bound, bound]``; a complex ``x`` part by part (its real pair's clipping)."""
    if jnp.iscomplexobj(x):
        return jax.lax.complex(jnp.clip(x.real, -bound, bound), jnp.clip(x.imag, -bound, bound))
    return jnp.clip(x, -bound, bound)


def scale_by_adopt(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.9999, eps: ScalarOrSchedule = 1e-6,
                   mu_dtype=None, *, nesterov: bool = False, use_clipping: bool = True,
                   clip_value_fn: Optional[Callable] = None, form: str = "paper") -> optax.GradientTransformation:
    r"""ADOPT's direction: the gradient normalised by the second moment of the *previous* steps.

    The first update only initialises :math:`v_1 = g_1^2` and returns zero. At every later step
    :math:`t \ge 2` (Algorithm 2 of the paper, as in the authors' code):

    .. math::
        n_t = \mathrm{clip}\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, c_t\Big), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) n_t, \quad
        u_t = m_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    with :math:`m_1 = 0` and :math:`\mathrm{clip}(x, c) = \min(\max(x, -c), c)` elementwise when
    ``use_clipping`` (:math:`c_t` = ``clip_value_fn(t)``, :math:`t^{1/4}` by default; no clipping
    otherwise). ``nesterov=True`` (optax's option, not in the paper) returns
    :math:`u_t = \beta_1 m_t + (1-\beta_1) n_t`. Complex params: :math:`g_t^2` is :math:`|g_t|^2`
    and the clipping acts on the real and imaginary parts (the real pair's).

    ``form="paper"`` calls ``clip_value_fn`` with the 1-based step :math:`t` (the authors' code,
    ``pytorch_optimizer.ADOPT``); ``form="optax"`` with the 0-based count :math:`t-1`, as
    ``optax.contrib.scale_by_adopt`` does.

    .. warning::
        ``optax.contrib.adopt`` clips at :math:`(t-1)^{1/4}` (its ``clip_value_fn`` receives the
        count before the increment: 1 at the first real update) where the authors clip at
        :math:`t^{1/4}` (:math:`2^{1/4}` there): ``form="optax"`` gives optax's numbers. The
        authors' (and ``pytorch_optimizer.ADOPT``'s) ``weight_decay`` is not here: chain
        :func:`add_decayed_weights` before (L2) or after (decoupled) this transform.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`, the floor of :math:`\sqrt{v_{t-1}}`.
        mu_dtype: the dtype of :math:`m` and :math:`v`, or ``None`` (the params'; optax keeps
            :math:`v` in the params' dtype whatever ``mu_dtype`` is).
        nesterov: optax's Nesterov form of :math:`u_t`.
        use_clipping: clip the normalised gradient at :math:`c_t`.
        clip_value_fn: :math:`c_t` as a function of the step (see ``form``), ``None`` for
            :math:`t^{1/4}`, or a number :math:`\ge 0`: a constant bound (what
            ``optax.inject_hyperparams``, which calls every callable argument with its 0-based count,
            passes on: inside it a function of the step gets optax's count whatever ``form`` is).
        form: ``"paper"`` or ``"optax"``.

    References:
        Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki, Iwasawa & Matsuo,
        "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate", NeurIPS 2024,
        Algorithm 2; github.com/iShohei220/adopt.
    """
    check_betas("scale_by_adopt", b1, b2, eps)
    check_state_dtype("scale_by_adopt", "mu_dtype", mu_dtype)
    if form not in _FORMS:
        raise ValueError(f"scale_by_adopt: form must be one of {_FORMS}, got {form!r}")
    if clip_value_fn is None:
        clip_value_fn = _quarter_power
    elif not callable(clip_value_fn):  # a bound optax.inject_hyperparams evaluated (it calls every callable)
        check_range("scale_by_adopt", "clip_value_fn", clip_value_fn, 0.0)
    values = given(b1=b1, b2=b2, eps=eps)

    def init_fn(params):
        return ScaleByAdoptState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
                                 zeros_in(params, mu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        started = state.count > 0
        step = optax.safe_increment(state.count) if form == "paper" else state.count
        bound = clip_value_fn(step) if callable(clip_value_fn) else clip_value_fn

        def normalised(g, v):
            n = widen(g) / jnp.maximum(jnp.sqrt(widen(v)), hp["eps"])
            return clip_components(n, bound) if use_clipping else n

        n = jax.tree.map(normalised, updates, state.nu)
        b1_ = jnp.where(started, hp["b1"], 1.0)  # the first step keeps m_1 = m_0 = 0
        m = jax.tree.map(lambda x, m: b1_ * widen(m) + (1 - b1_) * x, n, state.mu)
        out = jax.tree.map(lambda x, m: b1_ * m + (1 - b1_) * x, n, m) if nesterov else m
        b2_ = jnp.where(started, hp["b2"], 0.0)  # the first step: v_1 = g_1^2
        v = jax.tree.map(lambda g, v: b2_ * widen(v) + (1 - b2_) * abs2(widen(g)), updates, state.nu)
        out = jax.tree.map(lambda u, g: store(u, g.dtype), out, updates)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByAdoptState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_adopt", init_fn, update_fn)


@declare_optimizer(paper="Taniguchi et al. 2024",
                   update="`m=β₁m+(1-β₁)clip(g/max(√v₋,ε)); v=β₂v+(1-β₂)g²; θ-=γm`",
                   test_kwargs=dict(learning_rate=0.01, eps=0.1))
def adopt(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.9999,
          eps: ScalarOrSchedule = 1e-6, mu_dtype: Optional[object] = None, *, nesterov: bool = False,
          use_clipping: bool = True, clip_value_fn: Optional[Callable] = None,
          form: str = "paper") -> optax.GradientTransformation:
    r"""ADOPT: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_adopt`).

    ``mu_dtype``, ``nesterov``, ``use_clipping``, ``clip_value_fn``, ``form``: see
    :func:`scale_by_adopt`. No fused kernel: ``adopt`` runs its chain on every backend (no kernel
    of the fused backend computes its delayed normalisation and clipping).

    .. warning::
        ``optax.contrib.adopt`` is ``form="optax"`` (the clipping bound one step behind the
        authors'). ``pytorch_optimizer.ADOPT(weight_decay=0)`` is the default ``form="paper"``.

    References:
        Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate",
        NeurIPS 2024, Algorithm 2.
    """
    return optax.chain(scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping,
                                      clip_value_fn=clip_value_fn, form=form),
                       scale_by_learning_rate(learning_rate))
