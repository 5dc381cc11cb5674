"""Rprop: per-element step sizes adapted from the signs of successive gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.elementwise import after, clip
from optimizers.contract.dtypes import reject_complex
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import _is_number, check_range, either, init_hyperparams
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_FORMS = ("table", "torch")


@declare_state(nonnegative=('step_size',), elementwise=True)
class ScaleByRpropState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {}: the factors and bounds are static
    step_size: optax.Updates  # zeta_t, per element, in units of the learning rate (starts at 1)
    prev_grad: optax.Updates  # g_{t-1} (set to 0 after a sign change in the "torch" form)


def _scales(owner, learning_rate, min_scale, max_scale, min_step_size, max_step_size):
    """``(min_scale, max_scale)`` from ours or optax's absolute bounds (one of each pair), in units of the
    learning rate."""
    def scale(name, value, optax_name, absolute, default):
        if absolute is not None:
            if not (_is_number(learning_rate) or hasattr(learning_rate, "dtype")):
                raise ValueError(f"{owner}: {optax_name} (an absolute step size) needs a constant learning_rate "
                                 f"to convert, got a schedule; give {name} (in units of the learning rate)")
            check_range(owner, optax_name, absolute, 0.0, low_open=True)
            if _is_number(learning_rate):
                check_range(owner, "learning_rate", learning_rate, 0.0, low_open=True)
            absolute = absolute / learning_rate
        return either(owner, name, value, optax_name, absolute, default)

    return (scale("min_scale", min_scale, "min_step_size", min_step_size, 1e-4),
            scale("max_scale", max_scale, "max_step_size", max_step_size, 5e3))


def _check(owner, eta_plus, eta_minus, min_scale, max_scale, form):
    check_range(owner, "eta_plus", eta_plus, 1.0, low_open=True)
    check_range(owner, "eta_minus", eta_minus, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "min_scale", min_scale, 0.0, 1.0, low_open=True)
    check_range(owner, "max_scale", max_scale, 1.0)
    if form not in _FORMS:
        raise ValueError(f"{owner}: form must be one of {_FORMS}, got {form!r}")


def scale_by_rprop(
    learning_rate: Optional[ScalarOrSchedule] = None,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: Optional[float] = None,
    max_step_size: Optional[float] = None,
    *,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    form: str = "table",
) -> optax.GradientTransformation:
    r"""Rprop's step: a per-element step size times the sign of the gradient.

    ``form="table"`` (the update table of “Optimization algorithms in deep learning”; Rprop- of Igel & Hüsken):

    .. math::
        \zeta_t = \begin{cases}
            \min(\eta_+ \zeta_{t-1}, \zeta_{max}) & g_{t-1} g_t > 0 \\
            \max(\eta_- \zeta_{t-1}, \zeta_{min}) & g_{t-1} g_t < 0 \\
            \zeta_{t-1} & g_{t-1} g_t = 0
        \end{cases}, \qquad u_t = \zeta_t \operatorname{sign}(g_t)

    ``form="torch"`` (``torch.optim.Rprop``; iRprop- of Igel & Hüsken): the same step sizes,
    but after a sign change the gradient is taken as 0: no step at :math:`t`, and
    :math:`g_t = 0` is remembered, so :math:`\zeta` is kept at :math:`t+1`. (PyTorch also
    clips :math:`\zeta` when :math:`g_{t-1} g_t = 0`; as :math:`\zeta_0 = 1` must lie within
    the bounds, :math:`\zeta` never leaves them and that clip changes nothing.)

    :math:`g_0 = 0`, :math:`\zeta_0 = 1`. The step sizes are in units of whatever multiplies
    this transform's output: in :func:`rprop` the learning rate :math:`\gamma`, which is then
    the initial step size :math:`\Delta_0` and the actual step sizes are
    :math:`\Delta_t = \gamma_t \zeta_t \in [\gamma\zeta_{min}, \gamma\zeta_{max}]`.
    Complex params raise ``TypeError`` at ``init``: the rule compares signs.

    .. warning::
        The 1993 paper also reverts the previous step after a sign change
        (weight-backtracking, Rprop+); neither form here does. ``optax.scale_by_rprop`` takes
        the initial step size as ``learning_rate``, keeps the step size (no clip) when
        :math:`g_{t-1} g_t = 0`, and returns the *previous* step's update (its first update
        is 0), so it matches neither form. PyTorch's absolute bounds
        ``step_sizes=(a, b)`` are ``min_scale=a/lr, max_scale=b/lr`` here.

    optax's ``learning_rate`` (the initial step size :math:`\gamma`) multiplies the output here
    (the state is then a pair), so the steps are :math:`\gamma_t \zeta_t \operatorname{sign}(g_t)`
    as :func:`rprop`'s; its absolute bounds ``min_step_size``, ``max_step_size`` are
    ``min_scale``, ``max_scale`` times a constant :math:`\gamma` (one of each pair).

    Args:
        eta_plus: growth factor :math:`\eta_+ > 1` (1.2).
        eta_minus: shrink factor :math:`\eta_- \in (0, 1)` (0.5).
        min_scale: :math:`\zeta_{min} \in (0, 1]` (1e-4: PyTorch's 1e-6 at its ``lr=0.01``).
        max_scale: :math:`\zeta_{max} \ge 1` (5e3: PyTorch's 50 at ``lr=0.01``).
        form: ``"table"`` or ``"torch"``.
        learning_rate: optax's initial step size :math:`\gamma`, or ``None`` (1: the output is
            in units of what multiplies it).
        min_step_size, max_step_size: optax's absolute bounds, :math:`\gamma\zeta_{min}` and
            :math:`\gamma\zeta_{max}`.

    References:
        Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
        The RPROP Algorithm", IEEE ICNN 1993 (the update-values
        :math:`\Delta_{ij}` and the weight-update); Igel & Hüsken, "Improving the Rprop
        Learning Algorithm", NC 2000 (Rprop-, iRprop-).
    """
    min_scale, max_scale = _scales("scale_by_rprop", 1.0 if learning_rate is None else learning_rate, min_scale,
                                   max_scale, min_step_size, max_step_size)
    if learning_rate is not None:
        return optax.chain(scale_by_rprop(eta_plus=eta_plus, eta_minus=eta_minus, min_scale=min_scale,
                                          max_scale=max_scale, form=form),
                           scale_by_learning_rate(learning_rate, flip_sign=False))
    _check("scale_by_rprop", eta_plus, eta_minus, min_scale, max_scale, form)
    torch_form = form == "torch"

    def init_fn(params):
        reject_complex("scale_by_rprop", params, "its step sizes follow the signs of successive gradients, "
                       "which complex numbers do not have; split complex params into real and imaginary leaves")
        return ScaleByRpropState(jnp.zeros([], jnp.int32), init_hyperparams(),
                                 optax.tree.ones_like(params), optax.tree.zeros_like(params))

    def new_scale(agree, disagree, z):
        # clip, not jnp.clip: XLA:CPU would recompute a clamp in the update's kernel, from the old
        # step sizes it overwrites in place, and copy them first.
        return clip(z * jnp.where(agree, eta_plus, jnp.where(disagree, eta_minus, 1.0)), min_scale, max_scale)

    def update_fn(updates, state, params=None):
        del params
        # sign(g_{t-1}) sign(g_t) > 0 and < 0 from compares: a sign(g) also used by the step would be
        # written to a temporary under XLA:CPU's multi-output fusion.
        agree = jax.tree.map(lambda g, p: ((g > 0) & (p > 0)) | ((g < 0) & (p < 0)), updates, state.prev_grad)
        disagree = jax.tree.map(lambda g, p: ((g > 0) & (p < 0)) | ((g < 0) & (p > 0)), updates, state.prev_grad)
        zeta = jax.tree.map(lambda a, d, z: new_scale(a, d, z).astype(z.dtype), agree, disagree, state.step_size)
        if torch_form:
            grads = jax.tree.map(lambda d, g: jnp.where(d, jnp.zeros_like(g), g), disagree, updates)
        else:
            grads = updates
        # Written into prev_grad's buffer once the step sizes (which read the old one) are computed.
        prev = jax.tree.map(lambda g, p, z: after(g, z).astype(p.dtype), grads, state.prev_grad, zeta)
        # The torch form's masked gradient is read back from prev_grad, not from the old buffer.
        grads = jax.tree.map(lambda g, p: p if torch_form and p.dtype == g.dtype else g, grads, prev)
        out = jax.tree.map(lambda g, z: (z * jnp.sign(g)).astype(g.dtype), grads, zeta)
        return out, ScaleByRpropState(optax.safe_increment(state.count), state.hyperparams, zeta, prev)

    return transformation("scale_by_rprop", init_fn, update_fn)


@declare_optimizer(paper="Riedmiller & Braun 1993",
                   update="`ζ=clip(ζ·η±, ζmin, ζmax)` by the sign of `g·g₋`; `θ-=γζ·sign(g)`",
                   test_kwargs=dict(learning_rate=0.01))
def rprop(
    learning_rate: ScalarOrSchedule,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: Optional[float] = None,
    max_step_size: Optional[float] = None,
    *,
    min_scale: Optional[float] = None,
    max_scale: Optional[float] = None,
    form: str = "table",
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""Rprop: :math:`\theta_t = \theta_{t-1} - \gamma_t \zeta_t \operatorname{sign}(g_t)`.

    :math:`\zeta_t` from :func:`scale_by_rprop`. The learning rate is the initial step size
    (PyTorch's ``lr``) and the unit of every step size: with a constant :math:`\gamma`,
    ``rprop(lr, min_scale=a/lr, max_scale=b/lr, form="torch")`` is
    ``torch.optim.Rprop(lr=lr, step_sizes=(a, b))``; a schedule rescales all step sizes at
    once (and ``0`` freezes the parameters). ``fused=True``: the same update as one pass over
    memory on the CPU (see :func:`adam`); ``flat_state`` as there. ``min_scale`` and
    ``max_scale`` default to 1e-4 and 5e3.

    optax's absolute bounds ``min_step_size``, ``max_step_size`` are accepted for a constant
    learning rate, as ``min_scale = min_step_size / learning_rate`` (one of each pair).

    .. warning::
        optax's ``rprop`` positional order is ``(learning_rate, eta_minus, eta_plus, ...)``;
        this one's ``(learning_rate, eta_plus, eta_minus, ...)``: pass them by keyword.
    """
    min_scale, max_scale = _scales("rprop", learning_rate, min_scale, max_scale, min_step_size, max_step_size)
    _check("rprop", eta_plus, eta_minus, min_scale, max_scale, form)
    chain = optax.chain(scale_by_rprop(eta_plus=eta_plus, eta_minus=eta_minus, min_scale=min_scale,
                                       max_scale=max_scale, form=form),
                        scale_by_learning_rate(learning_rate))
    return accelerated("rprop", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate,
                       eta_plus=eta_plus, eta_minus=eta_minus, min_scale=min_scale, max_scale=max_scale,
                       torch_form=form == "torch")
