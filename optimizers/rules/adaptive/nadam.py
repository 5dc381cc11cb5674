"""Nadam: Adam with Nesterov momentum and Dozat's momentum schedule."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import adam, adamw, check_state_dtypes
from optimizers.contract.dtypes import store, store_like, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, float_dtype, given, init_hyperparams
from optimizers.contract.backend import accelerated
from optimizers.contract.moments import adam_denominator, adam_moments, check_betas, check_eps_root, step_number
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByNadamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu_product: jax.Array  # prod_{i<=t} mu_i, float scalar
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t


def scale_by_nadam(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
                   momentum_decay: float = 0.004, *, eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None,
                   nu_dtype=None) -> optax.GradientTransformation:
    r"""Nadam's direction, with Dozat's momentum schedule.

    .. math::
        \mu_t = \beta_1 \bigl(1 - \tfrac12 0.96^{t\psi}\bigr), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    .. math::
        u_t = \Bigl(\frac{(1-\mu_t)\, g_t}{1 - \prod_{i\le t}\mu_i}
              + \frac{\mu_{t+1} m_t}{1 - \prod_{i\le t+1}\mu_i}\Bigr)
              \Big/ \Bigl(\sqrt{v_t / (1-\beta_2^t)} + \epsilon\Bigr)

    This is Dozat's paper and ``torch.optim.NAdam(momentum_decay=psi)``.

    .. warning::
        Document 003's table divides the momentum term by :math:`1 - \prod_{i\le t}\mu_i`;
        the paper (followed here) by :math:`1 - \prod_{i\le t+1}\mu_i`. ``optax.nadam``
        has no momentum schedule (constant :math:`\beta_1`): that is
        ``scale_by_adam(nesterov=True)``, and ``nadam(..., momentum_decay=None)`` here.

    ``eps_root``, ``mu_dtype``, ``nu_dtype``: as in :func:`scale_by_adam`.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        momentum_decay: :math:`\psi \ge 0` (0.004).

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop, Algorithm 2.
    """
    check_betas("scale_by_nadam", b1, b2, eps)
    check_range("scale_by_nadam", "momentum_decay", momentum_decay, 0.0)
    check_eps_root("scale_by_nadam", eps_root)
    check_state_dtypes("scale_by_nadam", mu_dtype, nu_dtype)
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleByNadamState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                 jnp.ones([], float_dtype()), zeros_in(params, mu_dtype),
                                 zeros_in(params, nu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        _, m, v, _, c2 = adam_moments(updates, state, hp)
        mu_t, mu_next, prod = momentum_schedule(hp, state, momentum_decay)

        def direction(g, a, b):
            nesterov = (1 - mu_t) * g / (1 - prod) + mu_next * a / (1 - prod * mu_next)
            return store(nesterov / adam_denominator(b, c2, hp), g.dtype)

        out = jax.tree.map(direction, updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByNadamState(optax.safe_increment(state.count), hp, prod, *moments)

    return transformation("scale_by_nadam", init_fn, update_fn)


def momentum_schedule(hp, state, momentum_decay):
    r"""(:math:`\mu_t, \mu_{t+1}, \prod_{i\le t}\mu_i`) for the update at ``state.count``."""
    t = step_number(state.count, hp["b1"].dtype)
    mu_t = hp["b1"] * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = hp["b1"] * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    return mu_t, mu_next, state.mu_product * mu_t


@declare_optimizer(paper='Dozat 2016', update='Adam with Nesterov momentum and the μ schedule `μ_t=β₁(1-½·0.96^{tψ})`',
                   test_kwargs=dict(learning_rate=0.003))
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    *,
    momentum_decay: Optional[float] = 0.004,
    nu_dtype=None,
    nesterov: bool = True,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""Nadam: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_nadam`).

    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`.
    ``eps_root``, ``mu_dtype``, ``nu_dtype``: as in :func:`scale_by_adam` (with ``eps_root``, or
    a state dtype other than float32, ``fused=True`` runs the chain).

    .. warning::
        ``optax.nadam`` is Adam with Nesterov's :math:`\hat m_t` and a constant :math:`\beta_1`
        (no momentum schedule): ``momentum_decay=None`` gives it
        (``scale_by_adam(nesterov=True)``). optax's ``nesterov=False`` is plain Adam, and so is
        it here.
    """
    if momentum_decay is None or not nesterov:
        return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=bool(nesterov),
                    nu_dtype=nu_dtype, fused=fused,
                    flat_state=flat_state)
    chain = optax.chain(scale_by_nadam(b1, b2, eps, momentum_decay, eps_root=eps_root, mu_dtype=mu_dtype,
                                       nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))
    return accelerated("nadam", chain, fused=fused, flat_state=flat_state,
                       unsupported=None if eps_root is None else "its kernel has no eps_root",
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                       schedule=lambda hp, state: momentum_schedule(hp, state, momentum_decay))


@declare_optimizer(paper="Dozat 2016; Loshchilov & Hutter 2019",
                   update="Nadam's `u` with decoupled decay: `θ-=γ(u+λθ)`",
                   test_kwargs=dict(learning_rate=0.003, weight_decay=1e-4))
def nadamw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
           eps: ScalarOrSchedule = 1e-8, eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None,
           weight_decay: ScalarOrSchedule = 1e-4, mask: MaskOrFn = None, *, nesterov: bool = True,
           momentum_decay: Optional[float] = 0.004, nu_dtype=None) -> optax.GradientTransformation:
    r"""NadamW: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda \theta_{t-1})` with
    :func:`scale_by_nadam`'s :math:`u_t` (Dozat's momentum schedule): Nadam with decoupled
    weight decay, ``torch.optim.NAdam(decoupled_weight_decay=True)``.

    optax's positional order (``eps_root``, ``mu_dtype`` before ``weight_decay``) and its
    default :math:`\lambda = 10^{-4}`; ``momentum_decay`` :math:`\psi` and ``nu_dtype`` are
    keyword-only. ``mask`` selects the leaves that decay, as in :func:`adamw`. No fused kernel:
    it runs its chain.

    .. warning::
        ``optax.nadamw`` has no momentum schedule (constant :math:`\beta_1`, optax's
        ``adamw(nesterov=True)``): ``momentum_decay=None`` gives it. optax's ``nesterov=False``
        is AdamW, and so is it here.

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop, Algorithm 2;
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2.
    """
    if momentum_decay is None or not nesterov:
        return adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=mask, eps_root=eps_root,
                     mu_dtype=mu_dtype,
                     nu_dtype=nu_dtype, nesterov=bool(nesterov))
    return optax.chain(scale_by_nadam(b1, b2, eps, momentum_decay, eps_root=eps_root, mu_dtype=mu_dtype,
                                      nu_dtype=nu_dtype),
                       add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))
