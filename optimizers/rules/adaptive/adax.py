"""AdaX: Adam with an exponentially growing long-term memory of squared gradients."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.moments import ema, step_number
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByAdaxState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # the bias-corrected v_t / ((1+b2)^t - 1), not the raw v_t (see scale_by_adax)


def _growth(b2, t):
    r""":math:`(1+\beta_2)^t - 1`, without the cancellation of the direct formula in float32."""
    return jnp.expm1(t * jnp.log1p(b2))


def _weight_and_eps(hp, state, eps_on_raw_sqrt):
    r"""(:math:`w_t = \beta_2 / ((1+\beta_2)^t - 1)`, the :math:`\epsilon` added to :math:`\sqrt{\hat v_t}`)."""
    growth = _growth(hp["b2"], step_number(state.count, hp["b2"].dtype))
    return hp["b2"] / growth, hp["eps"] / jnp.sqrt(growth) if eps_on_raw_sqrt else hp["eps"]


def scale_by_adax(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 1e-4, eps: ScalarOrSchedule = 1e-8,
                  eps_on_raw_sqrt: bool = False, *, mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""AdaX's direction.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = (1+\beta_2) v_{t-1} + \beta_2 g_t^2, \quad
        \hat v_t = \frac{v_t}{(1+\beta_2)^t - 1}, \quad
        u_t = \frac{m_t}{\sqrt{\hat v_t} + \epsilon}

    as in the paper and the update table of “Optimization algorithms in deep learning” (:math:`m_t` is not
    bias-corrected). The state
    keeps :math:`\hat v_t`, updated as
    :math:`\hat v_t = \hat v_{t-1} + w_t (g_t^2 - \hat v_{t-1})` with
    :math:`w_t = \beta_2 / ((1+\beta_2)^t - 1)`, which is the same recurrence divided by
    :math:`(1+\beta_2)^t - 1`: the raw :math:`v_t` grows like :math:`(1+\beta_2)^t` and
    overflows float32 after :math:`88.7 / \log(1+\beta_2)` steps (887k at the default);
    :math:`\hat v_t` does not. :math:`(1+\beta_2)^t - 1` is computed as
    :math:`\operatorname{expm1}(t \log1p(\beta_2))`.

    .. warning::
        The authors' code (switchablenorms/AdaX) adds :math:`\epsilon` to the raw
        :math:`\sqrt{v_t}`, that is
        :math:`u_t = m_t \sqrt{(1+\beta_2)^t - 1} / (\sqrt{v_t} + \epsilon)`: set
        ``eps_on_raw_sqrt=True`` (their default :math:`\epsilon` is ``1e-12``; their ``AdaX``
        also adds an L2 term ``5e-4 * theta`` to the gradient, and ``AdaXW`` a decoupled decay,
        which :func:`add_decayed_weights` gives before or after this transform). Neither optax
        nor PyTorch has AdaX.

    Args:
        b1: :math:`\beta_1 \in [0, 1)` (0.9).
        b2: :math:`\beta_2 \in (0, 1)` (1e-4).
        eps: :math:`\epsilon > 0` (1e-8).
        eps_on_raw_sqrt: add :math:`\epsilon` to :math:`\sqrt{v_t}` before the correction.
        mu_dtype, nu_dtype: the dtypes of :math:`m_t` and :math:`\hat v_t` (saturating), or
            ``None`` (the params'); the update is computed in at least float32.

    References:
        Li et al., "AdaX: Adaptive Gradient Descent with Exponential Long Term Memory",
        arXiv:2004.09740, 2020, Algorithm 2.
    """
    check_range("scale_by_adax", "b1", b1, 0.0, 1.0, high_open=True)
    check_range("scale_by_adax", "b2", b2, 0.0, 1.0, low_open=True, high_open=True)
    check_range("scale_by_adax", "eps", eps, 0.0, low_open=True)
    check_state_dtype("scale_by_adax", "mu_dtype", mu_dtype)
    check_state_dtype("scale_by_adax", "nu_dtype", nu_dtype)

    def init_fn(params):
        return ScaleByAdaxState(jnp.zeros([], jnp.int32), init_hyperparams(b1=b1, b2=b2, eps=eps),
                                zeros_in(params, mu_dtype), zeros_in(params, nu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2, eps=eps), state.hyperparams, state.count)
        w, eps_hat = _weight_and_eps(hp, state, eps_on_raw_sqrt)
        m = ema(updates, state.mu, hp["b1"])
        v = jax.tree.map(lambda g, s: widen(s) + w * (abs2(widen(g)) - widen(s)), updates, state.nu)
        out = jax.tree.map(lambda g, a, b: store(a / (jnp.sqrt(b) + eps_hat), g.dtype), updates, m, v)
        return out, ScaleByAdaxState(optax.safe_increment(state.count), hp, store_like(m, state.mu),
                                     store_like(v, state.nu))

    return transformation("scale_by_adax", init_fn, update_fn)


@declare_optimizer(paper="Li et al. 2020", update="`v=(1+β₂)v+β₂g²; θ-=γ m/(√(v/((1+β₂)ᵗ-1))+ε)`",
                   test_kwargs=dict(learning_rate=0.01))
def adax(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 1e-4,
         eps: ScalarOrSchedule = 1e-8, eps_on_raw_sqrt: bool = False, *, mu_dtype=None, nu_dtype=None,
         fused: bool = False, flat_state: bool = False) -> optax.GradientTransformation:
    r"""AdaX: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_adax`).

    ``eps_on_raw_sqrt=True, eps=1e-12`` gives the authors' ``AdaX(weight_decay=0)``.
    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`
    (the chain runs with a state dtype other than float32).
    """
    chain = optax.chain(scale_by_adax(b1, b2, eps, eps_on_raw_sqrt, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
                        scale_by_learning_rate(learning_rate))
    return accelerated("adax", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate, b1=b1, b2=b2,
                       eps=eps, weight_and_eps=lambda hp, state: _weight_and_eps(hp, state, eps_on_raw_sqrt))
