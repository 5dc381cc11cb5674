"""MADGRAD: momentumized dual averaging with a cube-root adaptive denominator."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_learning_rate, check_range, current_hyperparams, init_hyperparams
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import add_decayed_weights
from schedules import ScalarOrSchedule


@declare_state(nonnegative=("grad_sum_sq",), elementwise=True)
class MadgradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far (k)
    hyperparams: dict  # {"learning_rate", "momentum", "eps"}
    grad_sum_sq: optax.Updates  # ν_k = Σ λ_i g_i² (real, non-negative)
    s: optax.Updates  # s_k = Σ λ_i g_i
    x0: optax.Params  # the params at init, the dual averaging's centre


def scale_by_madgrad(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9,
                     eps: ScalarOrSchedule = 1e-6) -> optax.GradientTransformation:
    r"""MADGRAD's step (Algorithm 1 of the paper, as the authors' code): the update *is* the
    change of the params, learning rate and sign included.

    With :math:`\lambda_k = (\gamma_k + \epsilon)\sqrt{k+1}` (:math:`k` from 0):

    .. math::
        s_{k+1} = s_k + \lambda_k g_k, \quad
        \nu_{k+1} = \nu_k + \lambda_k g_k^2, \quad
        z_{k+1} = x_0 - \frac{s_{k+1}}{\nu_{k+1}^{1/3} + \epsilon}, \quad
        x_{k+1} = \mu_k x_k + (1-\mu_k) z_{k+1}

    and the update :math:`x_{k+1} - x_k`; :math:`x_0` is the params given to ``init``. The
    learning rate enters :math:`\lambda_k` (a power 2/3 of the step), so it is a keyword here and
    the alias ends with this transform, not :func:`scale_by_learning_rate`. Complex params:
    :math:`g_k^2` is :math:`|g_k|^2`.

    .. warning::
        ``optax.contrib.scale_by_madgrad`` computes the same. The authors' code (and
        ``pytorch_optimizer.MADGRAD``) recomputes :math:`x_0 = x_k + s_k/(\nu_k^{1/3}+\epsilon)`
        from the current params when :math:`\mu = 0`: the same value unless something else moved
        the params between steps. Its ``lr=0`` sets :math:`\lambda_k = 0` (no gradient enters
        :math:`s` and :math:`\nu`); here (and in optax) :math:`\lambda_k = \epsilon\sqrt{k+1}`.

    Args:
        learning_rate: :math:`\gamma_k \ge 0`, a number or a schedule.
        momentum: :math:`\mu \in [0, 1)`.
        eps: :math:`\epsilon > 0`.

    References:
        Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
        Gradient Method for Stochastic Optimization", JMLR 2022 (arXiv 2021), Algorithm 1;
        github.com/facebookresearch/madgrad.
    """
    check_learning_rate("scale_by_madgrad", learning_rate)
    check_range("scale_by_madgrad", "momentum", momentum, 0.0, 1.0, high_open=True)
    check_range("scale_by_madgrad", "eps", eps, 0.0, low_open=True)
    values = dict(learning_rate=learning_rate, momentum=momentum, eps=eps)

    def init_fn(params):
        return MadgradState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, real=True),
                            zeros_in(params), jax.tree.map(jnp.asarray, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_madgrad: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        k = state.count.astype(hp["eps"].dtype)
        lam = (hp["learning_rate"] + hp["eps"]) * jnp.sqrt(k + 1)
        nu = jax.tree.map(lambda n, g: widen(n) + lam * abs2(widen(g)), state.grad_sum_sq, updates)
        s = jax.tree.map(lambda s, g: widen(s) + lam * widen(g), state.s, updates)

        def step(g, x0, p, n, s):
            z = widen(x0) - s / (jnp.cbrt(n) + hp["eps"])
            p = widen(p)
            return store((1 - hp["momentum"]) * (z - p), g.dtype)  # μ p + (1-μ) z - p

        out = jax.tree.map(step, updates, state.x0, params, nu, s)
        return out, MadgradState(optax.safe_increment(state.count), hp, store_like(nu, state.grad_sum_sq),
                                 store_like(s, state.s), state.x0)

    return transformation("scale_by_madgrad", init_fn, update_fn)


@declare_optimizer(paper="Defazio & Jelassi 2021",
                   update="`λ=γ√(k+1); s+=λg; ν+=λg²; z=θ₀-s/(∛ν+ε); θ=μθ+(1-μ)z`",
                   test_kwargs=dict(learning_rate=0.01))
def madgrad(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9,
            weight_decay: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 1e-6) -> optax.GradientTransformation:
    r"""MADGRAD: :func:`scale_by_madgrad` of :math:`g_k + \lambda_{wd}\,\theta_k` (the authors' L2 decay).

    No fused kernel: it runs its chain on every backend.

    .. warning::
        ``optax.contrib.madgrad`` computes the same (its ``weight_decay`` is the same L2 term).
        ``pytorch_optimizer.MADGRAD(weight_decouple=True)`` decays decoupled; the default
        ``weight_decouple=False`` is this one.

    References:
        Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
        Gradient Method for Stochastic Optimization", 2021, Algorithm 1.
    """
    return optax.chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate, momentum, eps))
