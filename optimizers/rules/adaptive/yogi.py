"""Yogi: Adam whose second moment moves by a signed, additive step."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, full_in, store, store_like, widen
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.moments import bias_correction, check_betas, check_eps_root, ema, step_number
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import check_state_dtypes
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_FORMS = ("paper", "optax")


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByYogiState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...} (and "eps_root" when given)
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t (non-negative: a step down is at most (1 - b2) v_{t-1})


def scale_by_yogi(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-3,
                  eps_root: Optional[ScalarOrSchedule] = None, initial_accumulator_value: float = 1e-6, *,
                  form: str = "paper", mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""Yogi's direction: the second moment moves toward :math:`g_t^2` by :math:`(1-\beta_2) g_t^2` at most.

    ``form="paper"`` (Algorithm 2 of the paper; :math:`m_0 = 0`, no bias correction):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = v_{t-1} - (1-\beta_2)\, \mathrm{sign}(v_{t-1} - g_t^2)\, g_t^2, \quad
        u_t = \frac{m_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon}

    with :math:`v_0` = ``initial_accumulator_value`` and :math:`\mathrm{sign}(0) = 0`.
    ``form="optax"`` (``optax.scale_by_yogi``, TensorFlow Addons' ``Yogi`` and
    ``pytorch_optimizer.Yogi``): :math:`m_0 = v_0` = ``initial_accumulator_value`` and both
    moments bias-corrected, :math:`u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`
    with :math:`\hat m_t = m_t/(1-\beta_1^t)`, :math:`\hat v_t = v_t/(1-\beta_2^t)`.
    ``eps_root=None`` (optax's default ``0.0``) adds nothing. Complex params: :math:`g_t^2` is
    :math:`|g_t|^2`, :math:`v_t` real.

    .. warning::
        optax's ``scale_by_yogi`` and ``yogi`` are ``form="optax"``: their early steps are larger
        than the paper's by the bias corrections (:math:`1/(1-\beta_1^t)` and
        :math:`\sqrt{1-\beta_2^t}`), and their :math:`m_0` is not 0.

    ``mu_dtype`` and ``nu_dtype`` keep :math:`m` and :math:`v` in that dtype, as in
    :func:`scale_by_adam`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` inside the root, or ``None``.
        initial_accumulator_value: :math:`v_0 \ge 0` (and :math:`m_0` in the optax form).
        form: ``"paper"`` or ``"optax"``.
        mu_dtype, nu_dtype: the dtypes of :math:`m` and :math:`v`, or ``None`` (the params').

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization",
        NeurIPS 2018, Algorithm 2.
    """
    check_betas("scale_by_yogi", b1, b2, eps)
    check_eps_root("scale_by_yogi", eps_root)
    check_range("scale_by_yogi", "initial_accumulator_value", initial_accumulator_value, 0.0)
    check_state_dtypes("scale_by_yogi", mu_dtype, nu_dtype)
    if form not in _FORMS:
        raise ValueError(f"scale_by_yogi: form must be one of {_FORMS}, got {form!r}")
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    optax_form = form == "optax"

    def init_fn(params):
        mu = full_in(params, initial_accumulator_value if optax_form else 0.0, mu_dtype)
        nu = full_in(params, initial_accumulator_value, nu_dtype, real=True)
        return ScaleByYogiState(jnp.zeros([], jnp.int32), init_hyperparams(**values), mu, nu)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        m = ema(updates, state.mu, hp["b1"])

        def second(g, s):
            g2, s = abs2(widen(g)), widen(s)
            return s - (1 - hp["b2"]) * jnp.sign(s - g2) * g2

        v = jax.tree.map(second, updates, state.nu)
        c1, c2 = (bias_correction(hp["b1"], t), bias_correction(hp["b2"], t)) if optax_form else (1.0, 1.0)
        root = hp.get("eps_root", 0.0)
        out = jax.tree.map(lambda g, a, b: store(a / c1 / (hp["eps"] + jnp.sqrt(b / c2 + root)), g.dtype),
                           updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByYogiState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_yogi", init_fn, update_fn)


@declare_optimizer(paper="Zaheer et al. 2018", update="`v-=(1-β₂)sign(v-g²)g²; θ-=γ m/(√v+ε)`",
                   test_kwargs=dict(learning_rate=0.01))
def yogi(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
         eps: ScalarOrSchedule = 1e-3, *, eps_root: Optional[ScalarOrSchedule] = None,
         initial_accumulator_value: float = 1e-6, form: str = "paper", mu_dtype=None,
         nu_dtype=None) -> optax.GradientTransformation:
    r"""Yogi: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_yogi`).

    ``eps_root``, ``initial_accumulator_value``, ``form``, ``mu_dtype``, ``nu_dtype``: see
    :func:`scale_by_yogi`. No fused kernel: ``yogi`` runs its chain on every backend.

    .. warning::
        ``optax.yogi`` is ``form="optax"`` (bias-corrected moments, :math:`m_0 = 10^{-6}`), and so
        is ``pytorch_optimizer.Yogi(initial_accumulator=initial_accumulator_value)``.

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization",
        NeurIPS 2018, Algorithm 2.
    """
    return optax.chain(scale_by_yogi(b1, b2, eps, eps_root, initial_accumulator_value, form=form,
                                     mu_dtype=mu_dtype, nu_dtype=nu_dtype),
                       scale_by_learning_rate(learning_rate))
