"""ACProp: AdaBelief's centred second moment, used one step late (asynchronously)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.moments import bias_correction, check_betas, ema
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=("nu",), elementwise=True)
class ScaleByAcpropState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1", "b2", "eps", "eps_root"}
    mu: optax.Updates  # m_t, the EMA of the gradients (only centres s)
    nu: optax.Updates  # s_t, the EMA of (g_t - m_{t-1})^2 (real, non-negative)


def scale_by_acprop(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-16,
                    eps_root: ScalarOrSchedule = 1e-16) -> optax.GradientTransformation:
    r"""ACProp's direction: the gradient over the root of the *previous* step's centred second moment.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_{t-1})^2 + \epsilon_{root},

    .. math::
        u_t = \frac{g_t}{\sqrt{s_{t-1}/(1-\beta_2^{t-1})} + \epsilon} \ (t \ge 2), \qquad
        u_1 = \frac{g_1}{1 + \epsilon}

    (:math:`m_0 = s_0 = 0`). :math:`g_t` and :math:`s_{t-1}` are independent given the past: the
    asynchronous update of the paper. Complex params: the square is :math:`|g_t - m_{t-1}|^2`.

    .. warning::
        This is ``optax.contrib.scale_by_acprop``'s computation, which follows the authors'
        repository (juntang-zhuang/ACProp-Optimizer) by its own account; neither that code nor a
        ``pytorch_optimizer`` ACProp (4.1.0 has none) was available here to check it against,
        so the tests compare with a float64 transcription of these equations and with optax.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0` outside the root.
        eps_root: :math:`\epsilon_{root} \ge 0`, added to :math:`s_t` at every step.

    References:
        Zhuang, Ding, Tang, Dvornek, Tatikonda & Duncan, "Momentum Centering and Asynchronous
        Update for Adaptive Gradient Methods", NeurIPS 2021, Algorithm 2 (ACProp).
    """
    check_betas("scale_by_acprop", b1, b2, eps)
    check_range("scale_by_acprop", "eps_root", eps_root, 0.0)
    values = dict(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleByAcpropState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params),
                                  zeros_in(params, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        m = ema(updates, state.mu, hp["b1"])
        s = jax.tree.map(lambda g, m_old, s: hp["b2"] * widen(s) + (1 - hp["b2"]) * abs2(widen(g) - widen(m_old))
                         + hp["eps_root"], updates, state.mu, state.nu)
        first = state.count == 0
        c2 = bias_correction(hp["b2"], jnp.maximum(state.count, 1).astype(hp["b2"].dtype))

        def direction(g, s_old):
            root = jnp.where(first, 1.0, jnp.sqrt(widen(s_old) / c2))
            return store(widen(g) / (root + hp["eps"]), g.dtype)

        out = jax.tree.map(direction, updates, state.nu)
        return out, ScaleByAcpropState(optax.safe_increment(state.count), hp, store_like(m, state.mu),
                                       store_like(s, state.nu))

    return transformation("scale_by_acprop", init_fn, update_fn)


@declare_optimizer(paper="Zhuang et al. 2021",
                   update="`s=β₂s+(1-β₂)(g-m₋)²+ε; m=β₁m+(1-β₁)g; θ-=γ(g/(√ŝ₋+ε)+λθ)`",
                   test_kwargs=dict(learning_rate=0.003, eps=1e-3))  # eps=1e-16 leaves Rosenbrock's s ~0: it diverges
def acprop(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
           eps: ScalarOrSchedule = 1e-16, eps_root: ScalarOrSchedule = 1e-16, weight_decay: ScalarOrSchedule = 0.0,
           mask=None) -> optax.GradientTransformation:
    r"""ACProp: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda_t \theta_{t-1})` (:func:`scale_by_acprop`).

    ``weight_decay`` (decoupled, times the learning rate) and ``mask`` as :func:`add_decayed_weights`.
    No fused kernel: it runs its chain on every backend.

    .. warning::
        ``optax.contrib.acprop`` computes the same; see :func:`scale_by_acprop` for what could
        not be checked against the authors' code.

    References:
        Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient Methods",
        NeurIPS 2021.
    """
    return optax.chain(scale_by_acprop(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
                       scale_by_learning_rate(learning_rate))
