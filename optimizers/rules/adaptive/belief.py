"""AdaBelief: Adam with the second moment of the gradient's deviation from its running mean."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, store, store_like, widen
from optimizers.contract.hyperparams import current_hyperparams, given
from optimizers.contract.moments import bias_correction, check_betas, check_eps_root, corrected_mu, ema, step_number
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import _init, check_state_dtypes
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByBeliefState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...} (and "eps_root" when given)
    mu: optax.Updates  # m_t, first moment
    nu: optax.Updates  # s_t, second moment of g_t - m_t, with the epsilons added so far


def scale_by_belief(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-16,
                    eps_root: Optional[ScalarOrSchedule] = None, *, nesterov: bool = False, mu_dtype=None,
                    nu_dtype=None) -> optax.GradientTransformation:
    r"""AdaBelief's direction: Adam whose second moment is of the "belief" :math:`g_t - m_t`.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        s_t = \beta_2 s_{t-1} + (1-\beta_2) (g_t - m_t)^2 + \epsilon_{root}, \quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{s_t / (1-\beta_2^t)} + \epsilon}

    The paper's Algorithm 2 has one :math:`\epsilon`, added to :math:`s_t` at every step (so it
    accumulates in the state) and to the denominator: ``eps_root=None`` (the default) is that,
    :math:`\epsilon_{root} = \epsilon`. The authors' ``adabelief-pytorch`` and
    ``pytorch_optimizer.AdaBelief`` (``rectify=False``, no weight decay) compute the same.
    A number for ``eps_root`` gives optax's form, two separate constants. Complex params:
    :math:`(g_t - m_t)^2` is :math:`|g_t - m_t|^2`, :math:`s_t` real.

    .. warning::
        ``optax.scale_by_belief`` takes ``eps_root=1e-16`` by default whatever ``eps`` is; here
        ``eps_root`` follows ``eps`` unless given. The two agree at the defaults
        (:math:`\epsilon = \epsilon_{root} = 10^{-16}`), and whenever ``eps_root`` is passed.

    optax's ``nesterov=True`` uses :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) +
    (1-\beta_1) g_t/(1-\beta_1^t)` in place of :math:`m_t/(1-\beta_1^t)` (not in the paper).
    ``mu_dtype`` and ``nu_dtype`` keep :math:`m` and :math:`s` in that dtype, as in
    :func:`scale_by_adam`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` added to :math:`s_t`, or ``None``: :math:`\epsilon`.
        nesterov: optax's Nesterov form of :math:`\hat m_t`.
        mu_dtype, nu_dtype: the dtypes of :math:`m` and :math:`s`, or ``None`` (the params').

    References:
        Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
        Gradients", NeurIPS 2020, Algorithm 2.
    """
    check_betas("scale_by_belief", b1, b2, eps)
    check_eps_root("scale_by_belief", eps_root)
    check_state_dtypes("scale_by_belief", mu_dtype, nu_dtype)
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        added = hp.get("eps_root", hp["eps"])
        m = ema(updates, state.mu, hp["b1"])
        s = jax.tree.map(lambda g, a, b: hp["b2"] * widen(b) + (1 - hp["b2"]) * abs2(widen(g) - a) + added,
                         updates, m, state.nu)
        c1, c2 = bias_correction(hp["b1"], t), bias_correction(hp["b2"], t)
        out = jax.tree.map(lambda g, a, b: store(corrected_mu(g, a, hp, t, c1, nesterov)
                                                 / (hp["eps"] + jnp.sqrt(b / c2)), g.dtype), updates, m, s)
        moments = store_like(m, state.mu), store_like(s, state.nu)
        return out, ScaleByBeliefState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_belief", lambda p: _init(ScaleByBeliefState, values, p, 2, mu_dtype, nu_dtype),
                          update_fn)


@declare_optimizer(paper="Zhuang et al. 2020", update="`s=β₂s+(1-β₂)(g-m)²+ε; θ-=γ m̂/(√ŝ+ε)`",
                   test_kwargs=dict(learning_rate=0.01))
def adabelief(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
              eps: ScalarOrSchedule = 1e-16, eps_root: Optional[ScalarOrSchedule] = None, *, nesterov: bool = False,
              mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""AdaBelief: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_belief`).

    ``eps_root``, ``nesterov``, ``mu_dtype``, ``nu_dtype``: see :func:`scale_by_belief`
    (``eps_root=None`` is the paper's single :math:`\epsilon`; a number is optax's form). No
    fused kernel: ``adabelief`` runs its chain on every backend.

    .. warning::
        optax's ``adabelief`` adds ``eps_root=1e-16`` to :math:`s_t` whatever ``eps`` is; here
        ``eps`` unless ``eps_root`` is given (equal at the defaults).

    References:
        Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
        Gradients", NeurIPS 2020, Algorithm 2.
    """
    return optax.chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype,
                                       nu_dtype=nu_dtype),
                       scale_by_learning_rate(learning_rate))
