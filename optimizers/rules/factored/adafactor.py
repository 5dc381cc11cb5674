r"""Adafactor: factored second moments, update clipping, and steps relative to the parameter scale.

The pieces, each a transform, in the order :func:`adafactor` chains them:

1. :func:`scale_by_factored_rms`: :math:`U_t = G_t / \sqrt{\hat V_t}` (Algorithms 4 and 5);
2. :func:`clip_by_block_rms`: :math:`\hat U_t = U_t / \max(1, \mathrm{RMS}(U_t)/d)` (Section 6);
3. :func:`scale_by_param_block_rms`: times :math:`\max(\epsilon_2, \mathrm{RMS}(X_{t-1}))` (Section 8);
4. the optional first moment, :func:`~optimizers.rules.momentum.ema.scale_by_ema`;
5. :func:`scale_by_relative_step`: times :math:`-\rho_t = -\min(\gamma_t, 1/\sqrt t)` (Section 8),
   or :func:`scale_by_learning_rate` for an absolute step.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.factored.adafactor_steps import ClipByBlockRmsState as ClipByBlockRmsState  # noqa: F401  (exported)
from optimizers.rules.factored.adafactor_steps import ScaleByParamBlockRmsState as ScaleByParamBlockRmsState  # noqa: F401
from optimizers.rules.factored.adafactor_steps import ScaleByRelativeStepState as ScaleByRelativeStepState  # noqa: F401
from optimizers.rules.factored.adafactor_steps import (clip_by_block_rms, decay_after_step, scale_by_param_block_rms,
                                         scale_by_relative_step)
from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, check_state_dtype, moment_dtype, store
from optimizers.rules.momentum.ema import scale_by_ema
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, either, float_dtype, init_hyperparams, is_zero
from optimizers.contract.layers import LayerAxes, check_layer_axes, falls_back, leaf_layer_axes
from optimizers.contract.moments import step_number
from optimizers.rules.scaling import MaskOrFn, scale_by_learning_rate
from schedules import ScalarOrSchedule


def _zeros_without(p, axis, dtype):
    """Zeros shaped like ``p`` reduced over ``axis`` (keeping ``p``'s sharding), in ``dtype``."""
    return jnp.zeros_like(jax.eval_shape(lambda x: jnp.mean(x, axis=axis), p), dtype=dtype)


@declare_state(nonnegative=('v_row', 'v_col', 'v'), elementwise=False)
class ScaleByFactoredRmsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {}: decay_rate and eps are constants of the algorithm
    v_row: optax.Updates  # factored leaves: R_t / m, shape p.shape[:-1] (layer axes first); others: empty (0,)
    v_col: optax.Updates  # factored leaves: C_t / n, shape p.shape[:-2] + p.shape[-1:]; others: empty (0,)
    v: optax.Updates  # other leaves: V_t, shape p.shape; factored leaves: empty (0,)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: Optional[int] = None,
    min_dim_size_to_factor: int = 128,
    epsilon: Optional[float] = None,
    decay_rate_fn: Optional[Callable] = None,
    *,
    eps: Optional[float] = None,
    nu_dtype=None,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""Divides by the root of a factored (rows x columns) moving average of squared gradients.

    With :math:`\hat\beta_{2,t} = 1 - t^{-c}` and, for a leaf whose last two dims
    (:math:`n \times m`) are both at least ``min_dim_size_to_factor``:

    .. math::
        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t}) (G_t^2 + \epsilon_1) 1_m, \quad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t}) 1_n^\top (G_t^2 + \epsilon_1), \quad
        \hat V_t = \frac{R_t C_t}{1_n^\top R_t}, \quad U_t = \frac{G_t}{\sqrt{\hat V_t}}

    (leading dims are a batch of matrices); for every other leaf (vectors, scalars, small
    matrices) the full :math:`\hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1-\hat\beta_{2,t})
    (G_t^2 + \epsilon_1)`. The state keeps row and column means (:math:`R_t/m`,
    :math:`C_t/n`), which give the same :math:`\hat V_t` as the paper's sums: a
    ``(1024, 512)`` matrix keeps 1024 + 512 numbers. :math:`\hat\beta_{2,1} = 0`, so no bias
    correction is needed. Which leaves are factored is fixed at ``init``.

    .. warning::
        ``optax.scale_by_factored_rms`` factors the two *largest* dims of a leaf; this one the
        last two (as ``torch.optim.Adafactor``): the same for matrices, different for e.g. a
        ``(256, 3, 256)`` kernel (optax factors it, this keeps a full moment). optax computes
        :math:`\hat\beta_{2,t}` in float32 even under ``jax_enable_x64``.
        ``torch.optim.Adafactor`` factors every leaf of rank >= 2
        (``min_dim_size_to_factor=1`` here) and clamps :math:`\hat V_t \ge \epsilon_1^2`
        instead of adding :math:`\epsilon_1` to :math:`G_t^2` (as the paper and optax do); the
        two differ only for gradients of magnitude near :math:`\sqrt{\epsilon_1}`.

    .. warning::
        optax's ``step_offset`` :math:`k` (the first step of a fine-tuning phase) computes
        :math:`\hat\beta_{2,t}` from :math:`t - k`, which is :math:`\le 0` for the first
        :math:`k` steps of a fresh state: :math:`0^{-c}` and roots of negative numbers, NaN
        updates from step 1 (optax#1791). Here the schedule restarts at :math:`k`:
        :math:`\hat\beta_{2,t} = 1 - \max(t - k, 1)^{-c}`, so steps up to :math:`k + 1` take the
        gradient's square whole (:math:`\hat\beta = 0`, as at step 1) and later ones decay as
        from a new start.

    ``decay_rate_fn(i, decay_rate)`` (optax's) gives :math:`\hat\beta_{2}` at the 0-based step
    :math:`i` (after the offset) instead of :math:`1 - (i+1)^{-c}`.

    Args:
        decay_rate: :math:`c \in [0, 1]`, the exponent of :math:`\hat\beta_{2,t}` (0.8).
        eps: :math:`\epsilon_1 > 0` added to :math:`G_t^2` (:math:`10^{-30}`).
        min_dim_size_to_factor: factor only when both of the last two dims are at least this
            (``>= 1``; 128 as optax).
        factored: ``False`` keeps full second moments for every leaf.
        epsilon: optax's name for ``eps`` (give one).
        step_offset: :math:`k \ge 0`, or ``None`` (0).
        decay_rate_fn: ``(i, decay_rate) -> beta``, or ``None`` (the paper's).
        nu_dtype: the dtype of the moments (rows, columns, or full; saturating), or ``None`` (the
            params' real dtype); the update is computed in at least float32.
        layer_axes: the leading axes of each leaf that index stacked layers (a prefix tree
            of ints or a function of the params, see the scanned-layers guide): a
            layer is
            factored when *it* is a large enough matrix (a stack of vectors is not), its rows
            and columns are per layer (shapes ``p.shape[:-1]``, ``p.shape[:-2] + p.shape[-1:]``,
            layer axes first). ``None``: the whole leaf decides.

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
        ICML 2018, Algorithms 4 (matrices) and 5 (other tensors), Section 7 (:math:`\hat\beta_{2,t}`).
    """
    owner = "scale_by_factored_rms"
    check_range(owner, "epsilon", epsilon, 0.0, low_open=True)
    eps = either(owner, "eps", eps, "epsilon", epsilon, default=1e-30)
    if step_offset is not None:
        check_range(owner, "step_offset", step_offset, 0)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    check_range(owner, "decay_rate", decay_rate, 0.0, 1.0)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "min_dim_size_to_factor", min_dim_size_to_factor, 1)
    check_layer_axes(owner, layer_axes)

    def init_fn(params):
        if isinstance(min_dim_size_to_factor, jax.core.Tracer):
            raise jax.errors.ConcretizationTypeError(
                min_dim_size_to_factor, f"{owner}: min_dim_size_to_factor decides which leaves are factored (the "
                "state's shapes), so it cannot be traced: under optax.inject_hyperparams, name it in static_args, "
                "or call init outside jax.jit")

        def init_leaf(p, k):
            dtype = moment_dtype(p.dtype, nu_dtype, real=True)
            if factored and p.ndim - k >= 2 and min(p.shape[-2:]) >= min_dim_size_to_factor:
                return _zeros_without(p, -1, dtype), _zeros_without(p, -2, dtype), jnp.zeros((0,), dtype)
            # Separate empty arrays: one array in two leaves cannot be donated twice.
            empty = lambda: jnp.zeros((0,), dtype)  # noqa: E731
            return empty(), empty(), jnp.zeros_like(p, dtype=dtype)

        moments = jax.tree.map(init_leaf, params, leaf_layer_axes(owner, layer_axes, params))
        pick = [jax.tree.map(lambda _, s, i=i: s[i], params, moments) for i in range(3)]
        return ScaleByFactoredRmsState(jnp.zeros([], jnp.int32), init_hyperparams(), *pick)

    def update_fn(updates, state, params=None):
        del params
        beta = _beta2(state.count, decay_rate, step_offset, decay_rate_fn)

        def update_leaf(g, r, c, v):
            x = g.astype(jnp.promote_types(g.dtype, beta.dtype))
            g2 = abs2(x) + eps
            if v.shape != g.shape:  # factored at init
                rr = beta * r + (1 - beta) * jnp.mean(g2, axis=-1)
                cc = beta * c + (1 - beta) * jnp.mean(g2, axis=-2)
                row = rr / jnp.mean(rr, axis=-1, keepdims=True)
                u = x * jax.lax.rsqrt(row)[..., None] * jax.lax.rsqrt(cc)[..., None, :]
                r, c = store(rr, r.dtype), store(cc, c.dtype)
            else:
                vv = beta * v + (1 - beta) * g2
                u = x * jax.lax.rsqrt(vv)
                v = store(vv, v.dtype)
            return store(u, g.dtype), r, c, v

        out = jax.tree.map(update_leaf, updates, state.v_row, state.v_col, state.v)
        u, r, c, v = [jax.tree.map(lambda _, o, i=i: o[i], updates, out) for i in range(4)]
        return u, ScaleByFactoredRmsState(optax.safe_increment(state.count), state.hyperparams, r, c, v)

    return transformation("scale_by_factored_rms", init_fn, update_fn)


def _beta2(count, decay_rate, step_offset=None, decay_rate_fn=None):
    r""":math:`\hat\beta_{2,t} = 1 - t^{-c}` for the update at ``count`` (:math:`t` counted from
    ``step_offset``, at least 1), or ``decay_rate_fn``'s."""
    if step_offset is not None:
        count = jnp.maximum(count - jnp.asarray(step_offset, count.dtype), 0)
    if decay_rate_fn is not None:
        return jnp.asarray(decay_rate_fn(count, decay_rate), float_dtype())
    t = step_number(count, float_dtype())
    return 1 - t ** (-jnp.asarray(decay_rate, t.dtype))


# Conformance: without momentum Rosenbrock stalls at (0.958, 0.928).
@declare_optimizer(paper="Shazeer & Stern 2018",
                   update="factored `V̂=RC/1ᵀR`; `U=g/√V̂` clipped; `θ-=min(γ,1/√t)·max(ε₂,RMS(θ))·U`",
                   test_kwargs=dict(learning_rate=0.1, b1=0.9))
def adafactor(
    learning_rate: ScalarOrSchedule = 1e-2,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: Optional[int] = None,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
    momentum: Optional[float] = None,
    dtype_momentum=None,
    weight_decay_rate: Optional[ScalarOrSchedule] = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
    *,
    b1: Optional[ScalarOrSchedule] = None,
    min_scale: float = 1e-3,
    relative_step: bool = True,
    mu_dtype=None,
    nu_dtype=None,
    fused: bool = False,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""Adafactor: :math:`X_t = X_{t-1} - \rho_t m_t`, :math:`m_t = \max(\epsilon_2, \mathrm{RMS}(X_{t-1}))\hat U_t`.

    :math:`\hat U_t` is the clipped factored-RMS direction (:func:`scale_by_factored_rms`,
    :func:`clip_by_block_rms`), :math:`\max(\epsilon_2, \mathrm{RMS}(X_{t-1}))` the parameter
    scale (:func:`scale_by_param_block_rms`) and :math:`\rho_t = \min(\gamma_t, 1/\sqrt t)`
    the relative step (:func:`scale_by_relative_step`). With ``b1``,
    :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) \max(\epsilon_2, \mathrm{RMS}(X_{t-1}))\hat U_t`
    (:func:`~optimizers.rules.momentum.ema.scale_by_ema`). The defaults are the paper's Section 9:
    :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)`, :math:`c = 0.8`, :math:`d = 1`,
    :math:`\epsilon_1 = 10^{-30}`, :math:`\epsilon_2 = 10^{-3}`, no momentum; document
    003's table is ``relative_step=False`` (its :math:`\gamma` is the step) with its norms
    read as root mean squares.

    .. warning::
        ``optax.adafactor(lr)`` has no relative step: it is ``relative_step=False``
        (and factors the two largest dims, see :func:`scale_by_factored_rms`). Its momentum
        averages :math:`\gamma_t \max(\epsilon_2, \mathrm{RMS}) \hat U_t`, as the authors'
        Tensor2Tensor code does; here :math:`\rho_t` multiplies after the average, which is
        the same while :math:`\rho_t` is constant (the first :math:`10^4` steps by default)
        and keeps a learning-rate schedule out of the buffer. Its ``weight_decay_rate`` is
        not multiplied by the learning rate.
        ``torch.optim.Adafactor(lr, eps=(1e-30, 1e-3))`` is
        ``adafactor(lr, min_dim_size_to_factor=1)`` up to its clamp of :math:`\epsilon_1`;
        its ``weight_decay`` (:math:`\theta \leftarrow (1-\gamma\lambda)\theta` first, not
        scaled by the parameter scale) is not part of this chain.

    optax's keywords: ``momentum`` is ``b1`` and ``dtype_momentum`` is ``mu_dtype`` (other
    spellings; give one of each pair; optax's default ``dtype_momentum=jnp.float32`` works, but
    ``None`` here keeps the params' dtype); ``decay_offset`` is
    :func:`scale_by_factored_rms`'s ``step_offset``; ``weight_decay_rate`` :math:`\lambda` (with
    ``weight_decay_mask``) subtracts :math:`\lambda X_{t-1}` after the step, not multiplied by
    the learning rate, as optax (``decay_after_step`` in ``optimizers.rules.factored.adafactor_steps``).

    .. warning::
        optax's ``decay_offset`` :math:`k > 0` gives NaN updates from step 1 of a fresh state
        (optax#1791: :math:`\hat\beta_2` from :math:`t - k \le 0`); here the decay schedule
        restarts at step :math:`k` instead (see :func:`scale_by_factored_rms`).

    Args:
        learning_rate: :math:`\gamma_t \ge 0`: the cap of :math:`\rho_t`, or the step itself
            when ``relative_step=False``; a number or a schedule.
        b1: first-moment decay :math:`\beta_1 \in [0, 1)`, or ``None`` (no momentum, no memory).
        decay_rate, eps, min_dim_size_to_factor, factored: see :func:`scale_by_factored_rms`.
        clipping_threshold: :math:`d \ge 1`, or ``None`` for no update clipping.
        min_scale: :math:`\epsilon_2 > 0`.
        multiply_by_parameter_scale: multiply by :math:`\max(\epsilon_2, \mathrm{RMS}(X_{t-1}))`.
        relative_step: :math:`\rho_t = \min(\gamma_t, 1/\sqrt t)`; ``False``: :math:`\rho_t = \gamma_t`.
        momentum: optax's name for ``b1``.
        mu_dtype: the momentum's dtype (saturating), or ``None`` (the params').
        dtype_momentum: optax's name for ``mu_dtype``.
        nu_dtype: the second moments' dtype (see :func:`scale_by_factored_rms`).
        decay_offset: the step :math:`k \ge 0` the second-moment decay restarts from, or ``None``.
        weight_decay_rate: :math:`\lambda \ge 0` (optax's), or ``None`` for none.
        weight_decay_mask: which leaves ``weight_decay_rate`` decays (see :func:`add_decayed_weights`).
        fused: the same update in three passes over memory on the CPU (see :func:`adam`): the
            second moments and the sums of squares, the clipping sums of factored leaves (with
            clipping), then the params. With ``decay_offset`` or ``weight_decay_rate`` (which the
            kernel does not have), or a state dtype other than float32, the chain runs.
        layer_axes: per stacked layer factoring, clipping and parameter scale (see
            :func:`scale_by_factored_rms`); with it ``fused=True`` runs the unfused chain (the
            kernel takes one statistic per leaf).

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
        ICML 2018, Algorithms 4 and 5, Sections 6-9.
    """
    check_range("adafactor", "momentum", momentum, 0.0, 1.0, high_open=True)  # checked under the name given
    check_range("adafactor", "decay_offset", decay_offset, 0)
    b1 = either("adafactor", "b1", b1, "momentum", momentum)
    mu_dtype = either("adafactor", "mu_dtype", mu_dtype, "dtype_momentum", dtype_momentum)
    check_state_dtype("adafactor", "mu_dtype", mu_dtype)
    if b1 is not None:
        check_range("adafactor", "b1", b1, 0.0, 1.0, high_open=True)
    param_scale = scale_by_param_block_rms(min_scale, layer_axes=layer_axes)  # built (and checked) even when left out
    chain = optax.chain(
        scale_by_factored_rms(decay_rate=decay_rate, eps=eps, min_dim_size_to_factor=min_dim_size_to_factor,
                              factored=factored, step_offset=decay_offset,
                              nu_dtype=nu_dtype, layer_axes=layer_axes),
        optax.identity() if clipping_threshold is None else clip_by_block_rms(clipping_threshold=clipping_threshold,
                                                                              layer_axes=layer_axes),
        param_scale if multiply_by_parameter_scale else optax.identity(),
        optax.identity() if is_zero(b1) else scale_by_ema(b1, mu_dtype),
        scale_by_relative_step(learning_rate) if relative_step else scale_by_learning_rate(learning_rate),
        *([] if weight_decay_rate is None else [decay_after_step(weight_decay_rate, weight_decay_mask)]),
    )
    unsupported = fused and (falls_back("adafactor", layer_axes)
                             or ("its kernel has no decay_offset" if decay_offset is not None else None)
                             or ("its kernel has no weight_decay_rate" if weight_decay_rate is not None else None))
    return accelerated("adafactor", chain, fused=fused, unsupported=unsupported, learning_rate=learning_rate,
                       eps=eps, clipping_threshold=clipping_threshold,
                       min_scale=min_scale if multiply_by_parameter_scale else None, b1=b1,
                       relative_step=relative_step, beta2=lambda count: _beta2(count, decay_rate))
