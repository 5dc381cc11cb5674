"""Adam and its close relatives: AdamW, AMSGrad and Adamax."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import current_hyperparams, given, init_hyperparams
from optimizers.contract.moments import (adam_denominator, adam_moments, bias_correction, check_betas, check_eps_root,
                                 corrected_mu, ema, step_number)
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


def _init(state_cls, values, params, n_buffers, mu_dtype=None, nu_dtype=None):
    """The first moment in ``mu_dtype`` (the params' by default); the others (of :math:`|g|^2` or
    :math:`|g|`) real, in ``nu_dtype`` (the params' real dtype by default)."""
    buffers = [zeros_in(params, mu_dtype)] + [zeros_in(params, nu_dtype, real=True) for _ in range(n_buffers - 1)]
    return state_cls(jnp.zeros([], jnp.int32), init_hyperparams(**values), *buffers)


def check_state_dtypes(owner, mu_dtype, nu_dtype):
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)




@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByAdamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t, first moment
    nu: optax.Updates  # v_t, second moment


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    *,
    nesterov: bool = False,
    nu_dtype=None,
) -> optax.GradientTransformation:
    r"""Adam's direction.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    The same as ``optax.scale_by_adam`` and ``torch.optim.Adam``. optax's ``eps_root``
    :math:`\epsilon_{root}` gives :math:`\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}}` (``None``: none,
    and no entry in the state's hyperparameters); optax's ``nesterov=True`` uses
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)` (Nadam with a
    constant :math:`\beta_1`, which is ``optax.nadam``).

    ``mu_dtype`` keeps :math:`m` and ``nu_dtype`` :math:`v` in that dtype (saturating; complex
    params: :math:`m` in its complex form, :math:`v` real); the update is computed in at least
    float32 and returned in the gradients' dtype. ``None``: the params' dtype, as before.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` inside the root, or ``None``.
        mu_dtype, nu_dtype: the dtypes of :math:`m` and :math:`v`, or ``None`` (the params').
        nesterov: the Nesterov form of :math:`\hat m_t`.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 1;
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop (``nesterov``).
    """
    check_betas("scale_by_adam", b1, b2, eps)
    check_eps_root("scale_by_adam", eps_root)
    check_state_dtypes("scale_by_adam", mu_dtype, nu_dtype)
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t, m, v, c1, c2 = adam_moments(updates, state, hp)
        # eps + sqrt, not sqrt + eps (the same sum): XLA then gives the first leaf of each shape the
        # others' kernel, fewer kernels to compile (README, "Compile time"); so the other adds of eps.
        out = jax.tree.map(lambda g, a, b: store(corrected_mu(g, a, hp, t, c1, nesterov) / adam_denominator(b, c2, hp),
                                                 g.dtype), updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByAdamState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_adam", lambda p: _init(ScaleByAdamState, values, p, 2, mu_dtype, nu_dtype),
                          update_fn)


def _unsupported(eps_root, nesterov):
    """What the Adam kernel does not have, or ``None``."""
    if eps_root is not None:
        return "its kernel has no eps_root"
    return "its kernel has no nesterov" if nesterov else None


@declare_optimizer(paper="Kingma & Ba 2015", update="`θ-=γ m̂/(√v̂+ε)`",
                   test_kwargs=dict(learning_rate=0.01))
def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    *,
    nesterov: bool = False,
    nu_dtype=None,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""Adam: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` with :func:`scale_by_adam`'s :math:`u_t`.

    ``fused=True``: the same update as one pass over memory on the CPU (the fused backend; with
    :func:`update_and_apply`, the whole step in place, as ``torch.optim.Adam(fused=True)``).
    ``flat_state=True`` (with ``fused``): :math:`m` and :math:`v` each one flat float32 array
    (the leaves one after another) instead of a tree: the same numbers, two buffers for JAX to
    pass instead of two per leaf (for float32 params; its checkpoints are not the tree form's).

    ``eps_root``, ``mu_dtype``, ``nu_dtype``, ``nesterov``: see :func:`scale_by_adam`. The kernel
    has no ``eps_root`` or ``nesterov``: with either, ``fused=True`` runs the chain; with a state
    dtype other than float32 it runs the chain too (the kernel takes float32 state only). Each
    such fallback warns, naming the reason (see the fused kernels guide).
    """
    chain = optax.chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
                        scale_by_learning_rate(learning_rate))
    return accelerated("adam", chain, fused=fused, flat_state=flat_state, unsupported=_unsupported(eps_root, nesterov),
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


@declare_optimizer(paper="Loshchilov & Hutter 2019", update="`θ-=γ(m̂/(√v̂+ε)+λθ)`",
                   test_kwargs=dict(learning_rate=0.01, weight_decay=1e-4))
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    weight_decay: ScalarOrSchedule = 0.01,
    mask: MaskOrFn = None,
    *,
    nu_dtype=None,
    nesterov: bool = False,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""AdamW: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda \theta_{t-1})`.

    Decoupled weight decay multiplied by the learning rate, as in the update table of “Optimization algorithms in deep
    learning”
    (:math:`\lambda = 0.01`), ``torch.optim.AdamW`` and ``optax.adamw``.

    .. warning::
        optax's ``adamw`` defaults to ``weight_decay=1e-4``; this one to the table's and
        PyTorch's ``0.01``. The paper's schedule multiplier :math:`\eta_t` is the learning
        rate's schedule here.

    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`;
    ``eps_root``, ``mu_dtype``, ``nu_dtype``, ``nesterov`` as there (keyword-only: optax's
    ``adamw`` has them before ``weight_decay``).

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2.
    """
    chain = optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    return accelerated("adamw", chain, fused=fused, flat_state=flat_state, unsupported=_unsupported(eps_root, nesterov),
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


@declare_state(nonnegative=('nu', 'nu_max'), elementwise=True)
class ScaleByAmsgradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t
    nu_max: optax.Updates  # running max of v_hat_t ("corrected") or of v_t ("raw")


def scale_by_amsgrad(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_over: str = "corrected",
    nu_dtype=None,
) -> optax.GradientTransformation:
    r"""AMSGrad's direction: Adam with a non-decreasing second moment.

    ``max_over="corrected"`` (the update table of “Optimization algorithms in deep learning”, optax):

    .. math::
        \hat v_t^{max} = \max(\hat v_{t-1}^{max}, v_t / (1-\beta_2^t)), \quad
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t^{max}} + \epsilon}

    ``max_over="raw"`` (``torch.optim.Adam(amsgrad=True)``): the max is over the raw
    :math:`v_t`, then divided by :math:`1-\beta_2^t`:
    :math:`u_t = \hat m_t / (\sqrt{v_t^{max} / (1-\beta_2^t)} + \epsilon)`. The two differ
    because :math:`1-\beta_2^t` grows with :math:`t`: the raw max remembers a large early
    :math:`v` less strongly.

    optax's ``bias_correction_mu=False`` drops :math:`1-\beta_1^t` from :math:`\hat m_t`, and
    ``bias_correction_nu=False`` drops :math:`1-\beta_2^t` (both forms then take the max over
    the raw :math:`v_t`). ``eps_root`` as in :func:`scale_by_adam`; ``nu_dtype`` keeps :math:`v_t`
    and the running max, ``mu_dtype`` :math:`m_t` (see :func:`scale_by_adam`).

    Args:
        b1, b2, eps, eps_root, mu_dtype: as in :func:`scale_by_adam`.
        max_over: ``"corrected"`` or ``"raw"``.
        nu_dtype: the dtype of :math:`v_t` and of its running max, or ``None`` (the params').
        bias_correction_mu, bias_correction_nu: divide by :math:`1-\beta_1^t`, :math:`1-\beta_2^t`.

    References:
        Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018, Algorithm 2.
    """
    check_betas("scale_by_amsgrad", b1, b2, eps)
    check_eps_root("scale_by_amsgrad", eps_root)
    check_state_dtypes("scale_by_amsgrad", mu_dtype, nu_dtype)
    if max_over not in ("corrected", "raw"):
        raise ValueError(f"scale_by_amsgrad: max_over must be 'corrected' or 'raw', got {max_over!r}")
    values = given(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t, m, v, c1, c2 = adam_moments(updates, state, hp)
        c1 = c1 if bias_correction_mu else 1.0
        c2 = c2 if bias_correction_nu else 1.0
        if max_over == "corrected":
            vmax = jax.tree.map(lambda b, s: jnp.maximum(widen(s), b / c2), v, state.nu_max)
            denom = jax.tree.map(lambda s: adam_denominator(s, 1.0, hp), vmax)
        else:
            vmax = jax.tree.map(lambda b, s: jnp.maximum(widen(s), b), v, state.nu_max)
            denom = jax.tree.map(lambda s: adam_denominator(s, c2, hp), vmax)
        out = jax.tree.map(lambda g, a, d: store(a / c1 / d, g.dtype), updates, m, denom)
        moments = store_like(m, state.mu), store_like(v, state.nu), store_like(vmax, state.nu_max)
        return out, ScaleByAmsgradState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_amsgrad", lambda p: _init(ScaleByAmsgradState, values, p, 3, mu_dtype, nu_dtype),
                          update_fn)


@declare_optimizer(paper="Reddi, Kale & Kumar 2018", update="`v̂ᵐᵃˣ=max(v̂ᵐᵃˣ, v̂); θ-=γ m̂/(√v̂ᵐᵃˣ+ε)`",
                   test_kwargs=dict(learning_rate=0.01))
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    mu_dtype=None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    max_over: str = "corrected",
    nu_dtype=None,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""AMSGrad: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_amsgrad`).

    ``max_over="raw"`` gives ``torch.optim.Adam(amsgrad=True)``. ``fused=True``: one pass over
    memory on the CPU, and ``flat_state``, as in :func:`adam`. optax's ``eps_root``,
    ``mu_dtype``, ``bias_correction_mu``, ``bias_correction_nu`` and ``nu_dtype``: see
    :func:`scale_by_amsgrad`; with ``eps_root`` or a bias correction off ``fused=True`` runs the
    chain (the kernel has neither), as it does with a state dtype other than float32.
    """
    chain = optax.chain(scale_by_amsgrad(b1, b2, eps, max_over=max_over, eps_root=eps_root, mu_dtype=mu_dtype,
                                         nu_dtype=nu_dtype, bias_correction_mu=bias_correction_mu,
                                         bias_correction_nu=bias_correction_nu),
                        scale_by_learning_rate(learning_rate))
    unsupported = _unsupported(eps_root, False) or (None if bias_correction_mu and bias_correction_nu else
                                                     "its kernel has no bias_correction_mu/nu=False")
    return accelerated("amsgrad", chain, fused=fused, flat_state=flat_state, unsupported=unsupported,
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, raw=max_over == "raw")


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByAdamaxState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t, exponentially weighted infinity norm


def scale_by_adamax(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                    eps: ScalarOrSchedule = 1e-8, *, mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""Adamax's direction: Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \max(\beta_2 v_{t-1}, |g_t| + \epsilon), \quad
        u_t = \frac{m_t}{(1-\beta_1^t)\, v_t}

    the update table of “Optimization algorithms in deep learning”, which is also ``torch.optim.Adamax`` and
    ``optax.scale_by_adamax``
    (the paper has :math:`\epsilon = 0`; the table's :math:`\epsilon` keeps
    :math:`v_t > 0`). ``mu_dtype``, ``nu_dtype``: the dtypes of :math:`m_t` and :math:`v_t`, as in
    :func:`scale_by_adam`.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 2.
    """
    check_betas("scale_by_adamax", b1, b2, eps)
    check_state_dtypes("scale_by_adamax", mu_dtype, nu_dtype)
    values = dict(b1=b1, b2=b2, eps=eps)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2, eps=eps), state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        m = ema(updates, state.mu, hp["b1"])
        v = jax.tree.map(lambda g, s: jnp.maximum(hp["b2"] * widen(s), jnp.abs(widen(g)) + hp["eps"]),
                         updates, state.nu)
        c1 = bias_correction(hp["b1"], t)
        out = jax.tree.map(lambda g, a, b: store(a / (c1 * b), g.dtype), updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByAdamaxState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_adamax", lambda p: _init(ScaleByAdamaxState, values, p, 2, mu_dtype, nu_dtype),
                          update_fn)


@declare_optimizer(paper="Kingma & Ba 2015", update=r"`v=max(β₂v,\|g\|+ε); θ-=γ m̂/v`",
                   test_kwargs=dict(learning_rate=0.01))
def adamax(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
           eps: ScalarOrSchedule = 1e-8, *, mu_dtype=None, nu_dtype=None, fused: bool = False,
           flat_state: bool = False) -> optax.GradientTransformation:
    r"""Adamax: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_adamax`).

    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`
    (the chain runs with a state dtype other than float32).
    """
    chain = optax.chain(scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
                        scale_by_learning_rate(learning_rate))
    return accelerated("adamax", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate, b1=b1, b2=b2,
                       eps=eps)


@declare_optimizer(paper="Kingma & Ba 2015; Loshchilov & Hutter 2019", update=r"`v=max(β₂v,\|g\|+ε); θ-=γ(m̂/v+λθ)`",
                   test_kwargs=dict(learning_rate=0.01, weight_decay=1e-4))
def adamaxw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
            eps: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 1e-4, mask: MaskOrFn = None, *,
            mu_dtype=None, nu_dtype=None) -> optax.GradientTransformation:
    r"""AdamaxW: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda \theta_{t-1})` with
    :func:`scale_by_adamax`'s :math:`u_t`: Adamax with decoupled weight decay.

    The same chain as ``optax.adamaxw`` (and its default :math:`\lambda = 10^{-4}`: no paper or
    table gives AdamaxW another). ``mask`` selects the leaves that decay, as in :func:`adamw`;
    ``mu_dtype``, ``nu_dtype`` as in :func:`scale_by_adamax`. No fused kernel: it runs its chain.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 2;
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2.
    """
    return optax.chain(scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
                       add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))
