"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import check_state_dtypes
from optimizers.contract.dtypes import store, store_like, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.backend import accelerated
from optimizers.contract.moments import adam_moments, check_betas, check_eps_root, corrected_mu
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByRadamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t


def _rho(b2, t):
    r"""The SMA length :math:`\rho_t = \rho_\infty - 2t\beta_2^t / (1-\beta_2^t)`, without cancellation.

    In float32 the direct formula subtracts two numbers near :math:`\rho_\infty` (~2000)
    to get one near :math:`t`, which puts ~1% errors into :math:`r_t` just above the
    threshold. With :math:`\delta = 1-\beta_2`, :math:`\ell = -\log(1-\delta)` and
    :math:`x = t\ell` it equals :math:`2/\delta - 2/\ell - 1 + (2/\ell)(1 - x/(e^x-1))`, and
    both small differences are summed from their Taylor series where they would cancel.
    """
    delta = 1 - b2
    ell = -jnp.log1p(-delta)
    ell_minus_delta = jnp.where(delta < 0.1, sum(delta**k / k for k in range(2, 10)), ell - delta)
    x = t * ell
    one_minus_b = jnp.where(x < 0.5, x / 2 - x**2 / 12 + x**4 / 720 - x**6 / 30240 + x**8 / 1209600,
                            1 - x / jnp.expm1(jnp.maximum(x, 0.5)))
    return 2 * ell_minus_delta / (delta * ell) - 1 + 2 / ell * one_minus_b


def _rectification(b2, t, threshold):
    """(rho_t > threshold, r_t) of the RAdam paper, Eq. (6)-(8)."""
    rho_inf = 2 / (1 - b2) - 1
    rho_t = _rho(b2, t)
    adapt = rho_t > threshold
    num = jnp.maximum((rho_t - 4) * (rho_t - 2) * rho_inf, 0.0)
    den = jnp.where(adapt, (rho_inf - 4) * (rho_inf - 2) * rho_t, 1.0)
    return adapt, jnp.sqrt(num / den)


def scale_by_radam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    threshold: float = 4.0,
    *,
    eps_on_raw_sqrt: bool = False,
    nesterov: bool = False,
    mu_dtype=None,
    nu_dtype=None,
) -> optax.GradientTransformation:
    r"""RAdam's direction.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
        \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}, \quad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    .. math::
        u_t = r_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} \ \text{ if } \rho_t > 4,
        \qquad u_t = \hat m_t \ \text{ otherwise (un-adapted momentum)}

    with Adam's bias-corrected :math:`\hat m_t, \hat v_t`, as in the paper and document
    003's table.

    .. warning::
        PyTorch rectifies only when :math:`\rho_t > 5` and adds :math:`\epsilon` to the raw
        :math:`\sqrt{v_t}`: ``threshold=5, eps_on_raw_sqrt=True`` gives
        ``torch.optim.RAdam``. optax uses :math:`\rho_t \ge 5`.

    optax's ``eps_root`` puts :math:`\epsilon_{root}` under the root of :math:`\hat v_t`
    (:math:`\sqrt{\hat v_t + \epsilon_{root}}`, in both forms), and ``nesterov=True`` uses
    :func:`scale_by_adam`'s Nesterov :math:`\hat m_t` (also in the un-adapted steps), as optax.
    ``mu_dtype``, ``nu_dtype``: as in :func:`scale_by_adam`.

    Args:
        b1, b2, eps: as in Adam.
        threshold: rectify when :math:`\rho_t` exceeds it; at least 4 (4 in the paper).
        eps_on_raw_sqrt: :math:`r_t \hat m_t \sqrt{1-\beta_2^t} / (\sqrt{v_t} + \epsilon)`.

    References:
        Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020,
        Algorithm 2.
    """
    check_betas("scale_by_radam", b1, b2, eps)
    check_range("scale_by_radam", "threshold", threshold, 4.0)
    check_eps_root("scale_by_radam", eps_root)
    check_state_dtypes("scale_by_radam", mu_dtype, nu_dtype)
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleByRadamState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                 zeros_in(params, mu_dtype), zeros_in(params, nu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t, m, v, c1, c2 = adam_moments(updates, state, hp)
        adapt, r = _rectification(hp["b2"], t, threshold)

        def direction(g, a, b):
            if "eps_root" in hp:  # sqrt(v_hat + eps_root) = sqrt((v + eps_root c2) / c2), in both forms
                b = b + hp["eps_root"] * c2
            if eps_on_raw_sqrt:
                adaptive = jnp.sqrt(c2) / (hp["eps"] + jnp.sqrt(b))
            else:
                adaptive = 1 / (hp["eps"] + jnp.sqrt(b / c2))
            return jnp.where(adapt, r * adaptive, 1.0) * corrected_mu(g, a, hp, t, c1, nesterov)

        out = jax.tree.map(lambda g, a, b: store(direction(g, a, b), g.dtype), updates, m, v)
        return out, ScaleByRadamState(optax.safe_increment(state.count), hp, store_like(m, state.mu),
                                      store_like(v, state.nu))

    return transformation("scale_by_radam", init_fn, update_fn)


@declare_optimizer(paper='Liu et al. 2020', update='`ρ_t>4: θ-=γ r_t m̂/(√v̂+ε)`, else `θ-=γ m̂`',
                   test_kwargs=dict(learning_rate=0.01))
def radam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    threshold: float = 4.0,
    *,
    eps_on_raw_sqrt: bool = False,
    nesterov: bool = False,
    mu_dtype=None,
    nu_dtype=None,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""RAdam: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_radam`).

    ``threshold=5, eps_on_raw_sqrt=True`` gives ``torch.optim.RAdam``. ``fused=True``: one
    pass over memory on the CPU, and ``flat_state``, as in :func:`adam`. ``eps_root``,
    ``nesterov``, ``mu_dtype``, ``nu_dtype``: see :func:`scale_by_radam` (with ``eps_root`` or
    ``nesterov``, or a state dtype other than float32, ``fused=True`` runs the chain).
    """
    chain = optax.chain(scale_by_radam(b1, b2, eps, threshold=threshold, eps_on_raw_sqrt=eps_on_raw_sqrt,
                                       eps_root=eps_root, nesterov=nesterov,
                                       mu_dtype=mu_dtype, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))
    unsupported = ("its kernel has no eps_root" if eps_root is not None else
                   "its kernel has no nesterov" if nesterov else None)
    return accelerated("radam", chain, fused=fused, flat_state=flat_state, unsupported=unsupported,
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_on_raw_sqrt=bool(eps_on_raw_sqrt),
                       rectification=lambda b2_, t: _rectification(b2_, t, threshold))
