"""Amos: Adam-style steps with adaptive learning-rate decay and weight decay towards a model-oriented scale."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.momentum.ema import scale_by_ema
from optimizers.contract.backend import accelerated
from optimizers.contract.dtypes import abs2, check_state_dtype, moment_dtype, store
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, init_hyperparams,
                                             is_zero)
from optimizers.contract.layers import LayerAxes, check_layer_axes, leaf_layer_axes
from optimizers.contract.moments import step_number
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

EtaOrFn = Union[float, Any, Callable[[optax.Params], Any]]
"""A float for every leaf, a pytree of floats with the params' structure (or a prefix of it),
or a function ``params -> such a pytree``."""

Granularity = Union[str, Callable[[jax.Array], Sequence[int]]]
"""``"element"``, ``"leaf"``, ``"last_axis"``, or a function ``leaf -> axes to share over``."""

_GRANULARITIES = ("element", "leaf", "last_axis")


@declare_state(nonnegative=('v', 'b'), elementwise=False)
class ScaleByAmosState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": xi, "beta": ...}
    v: optax.Updates  # v_t, per leaf of the reduced shape set by `granularity` (and `layer_axes`)
    b: optax.Updates  # b_t, the decay accumulator, v's shape


def _shared_axes(granularity, leaf, k=0) -> tuple:
    """The axes of ``leaf`` that share a slot; those of each layer with ``k`` layer axes."""
    if callable(granularity):
        layer = leaf if k == 0 else jax.ShapeDtypeStruct(leaf.shape[k:], leaf.dtype)
        return tuple(k + a % layer.ndim for a in granularity(layer))
    if granularity == "element":
        return ()
    return tuple(range(k, leaf.ndim if granularity == "leaf" else leaf.ndim - 1))


def _reduced_zeros(granularity, leaf, k=0, dtype=None):
    axes = _shared_axes(granularity, leaf, k)
    return jnp.zeros([1 if i in axes else n for i, n in enumerate(leaf.shape)], moment_dtype(leaf.dtype, dtype, True))


def _eta_tree(eta, params):
    tree = eta(params) if callable(eta) else eta
    return jax.tree.map(lambda e, p: jax.tree.map(lambda _: e, p), tree, params)


def _check(owner, eta, beta, c_coef, d_coef, granularity, eps):
    if not callable(eta):
        for value in jax.tree.leaves(eta):
            check_range(owner, "eta", value, 0.0, low_open=True)
    check_range(owner, "beta", beta, 0.0, 1.0, high_open=True)
    check_range(owner, "c_coef", c_coef, 0.0)
    check_range(owner, "d_coef", d_coef, 0.0)
    if not callable(granularity) and granularity not in _GRANULARITIES:
        raise ValueError(f"{owner}: granularity must be one of {_GRANULARITIES} or a function, got {granularity!r}")
    check_range(owner, "eps", eps, 0.0, low_open=True)


def scale_by_amos(xi: ScalarOrSchedule, eta: EtaOrFn, beta: ScalarOrSchedule = 0.999, c_coef: float = 0.25,
                  d_coef: float = 0.25, granularity: Granularity = "element",
                  eps: float = 2.0**-125, *, nu_dtype=None, layer_axes: LayerAxes = None
                  ) -> optax.GradientTransformation:
    r"""Amos's direction: the step of Algorithm 1 (as the authors' code computes it) divided by :math:`\xi`.

    Per leaf :math:`\theta` with model-oriented scale :math:`\tilde\eta`, with
    :math:`\overline{g_t^2}` the mean of :math:`g_t^2` over the axes that share a slot
    (``granularity``), :math:`v_0 = b_0 = 0`:

    .. math::
        v_t = \beta v_{t-1} + (1-\beta)\overline{g_t^2}, \quad
        \hat v_t = \frac{\max(v_t, \epsilon)}{1-\beta^t}, \quad
        c_t = \bigl(1 + c \sqrt{\xi}\, b_{t-1}\bigr)^{-1/2}, \quad
        d_t = \bigl(1 + d \sqrt{\xi \tilde\eta}\, b_{t-1}\bigr)^{-1}

    .. math::
        \gamma_t = c_t \xi^2 \frac{\overline{g_t^2}}{\hat v_t}, \quad
        u_t = d_t \Bigl(\tilde\eta \frac{g_t}{\sqrt{\hat v_t}}
              + \frac{\gamma_t}{2\xi} \theta_{t-1}\Bigr), \quad
        b_t = b_{t-1} + \gamma_t (1 + b_{t-1})

    so that :func:`amos`'s :math:`\theta_t = \theta_{t-1} - \xi u_t` is Algorithm 1's
    :math:`\theta_{t-1} - d_t(\xi\tilde\eta\, g_t / \sqrt{\hat v_t} + \tfrac12 \gamma_t \theta_{t-1})`:
    an Adam-style step with initial learning rate :math:`\xi\tilde\eta`, the adaptive weight
    decay :math:`\tfrac12\gamma_t` (an L2 pull towards 0 that fades), and the decay factors
    :math:`c_t` (of the weight decay) and :math:`d_t` (of both), driven by :math:`b_t`.
    :math:`\xi` enters :math:`c_t, d_t, \gamma_t`, so the transform needs it; give it the same
    value (or schedule) as the learning rate that multiplies its output. ``update`` needs
    ``params``.

    Choices, all those of the authors' JAX code (jestimator ``amos.py``):

    * :math:`c = d = \tfrac14` (jestimator's ``zeta``; pytorch-optimizer's ``c_coef``,
      ``d_coef``); :math:`\beta = 0.999`, to be set near :math:`1 - \xi`.
    * ``granularity`` sets which entries share :math:`v` and :math:`b` (the paper's slot
      sharing for memory): ``"element"`` one per entry (jestimator's default, no
      ``shape_fn``), ``"leaf"`` one per leaf (pytorch-optimizer's ``Amos``), ``"last_axis"``
      one per entry of the last axis (per output unit or channel of a Flax kernel, as in
      jestimator's examples), or a function ``leaf -> axes`` (jestimator's ``shape_fn``).
    * :math:`\epsilon = 2^{-125}` guards :math:`v_t = 0` (jestimator's); a zero gradient gives
      a zero step, not NaN.
    * jestimator's ``finetune_rate`` (1) and ``init_b_fn`` (:math:`b_0 = 0`) are not offered.
    * A schedule of :math:`\xi` or :math:`\beta` is read at the 0-based step, as everywhere in
      this package (jestimator reads it at the 1-based one).

    .. warning::
        the update table of “Optimization algorithms in deep learning” gives only the asymptotic rates
        :math:`\alpha_t \propto 1/(1+2\alpha_0 p_0 t)`; this is the algorithm. PyTorch has no
        Amos; pytorch-optimizer's keeps one :math:`v` per leaf (``granularity="leaf"``), adds
        :math:`10^{-18}` to :math:`v` instead of the max, and fixes :math:`\tilde\eta` by the
        leaf's rank. optax has no Amos.

    Args:
        xi: global learning rate :math:`\xi \ge 0` (about :math:`1/\sqrt{N}` for :math:`N`
            batches in the data, per the authors).
        eta: model-oriented scale :math:`\tilde\eta > 0` of each leaf, the expected size of its
            entries at the end of training (e.g. 0.5 for biases, :math:`\sqrt{2/\text{fan-in}}`
            for ReLU kernels): a float, a pytree of floats (or a prefix of the params'), or a
            function ``params -> pytree``.
        beta: :math:`\beta \in [0, 1)` (0.999).
        c_coef: :math:`c \ge 0` (0.25).
        d_coef: :math:`d \ge 0` (0.25).
        granularity: see above.
        eps: :math:`\epsilon > 0`.
        nu_dtype: the dtype of :math:`v_t` and :math:`b_t` (saturating), or ``None`` (the params'
            real dtype); the step is computed in at least float32.
        layer_axes: the leading axes of each leaf that index stacked layers (a prefix tree
            of ints or a function of the params, see the scanned-layers guide): the
            slots
            ``granularity`` shares are those of each layer (``"leaf"``: one per layer; a
            function is given one layer's shape). Nothing changes for ``"element"``.

    References:
        Tian & Parikh, "Amos: An Adam-style Optimizer with Adaptive Weight Decay towards
        Model-Oriented Scale", arXiv:2210.11693, 2022, Algorithm 1.
    """
    check_range("scale_by_amos", "xi", xi, 0.0)
    _check("scale_by_amos", eta, beta, c_coef, d_coef, granularity, eps)
    check_state_dtype("scale_by_amos", "nu_dtype", nu_dtype)
    check_layer_axes("scale_by_amos", layer_axes)

    def init_fn(params):
        axes = leaf_layer_axes("scale_by_amos", layer_axes, params)
        v = jax.tree.map(lambda p, k: _reduced_zeros(granularity, p, k, nu_dtype), params, axes)
        return ScaleByAmosState(jnp.zeros([], jnp.int32), init_hyperparams(learning_rate=xi, beta=beta), v,
                                jax.tree.map(jnp.zeros_like, v))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_amos: update needs params, got params=None")
        hp = current_hyperparams(dict(learning_rate=xi, beta=beta), state.hyperparams, state.count)
        x, b1 = hp["learning_rate"], hp["beta"]
        correction = 1 - b1 ** step_number(state.count, b1.dtype)

        def leaf(grad, v, b, theta, e, k):
            g = grad.astype(jnp.promote_types(grad.dtype, x.dtype))  # mean of g^2 not in bfloat16
            axes = _shared_axes(granularity, g, k)
            # A zero-size leaf shares its one slot among no entries: its mean square is 0, not NaN.
            g2 = jnp.mean(abs2(g), axis=axes, keepdims=True) if g.size else jnp.zeros(v.shape, v.dtype)
            v_new, b_old = b1 * v + (1 - b1) * g2, b
            b = b.astype(jnp.promote_types(b.dtype, x.dtype))
            r = correction / jnp.maximum(v_new, eps)  # 1 / v_hat
            c = jax.lax.rsqrt(1 + c_coef * jnp.sqrt(x) * b)
            d = 1 / (1 + d_coef * jnp.sqrt(x * e) * b)
            gamma_over_xi = c * x * r * g2  # gamma_t / xi, without dividing by xi
            u = d * (e * jnp.sqrt(r) * g + 0.5 * gamma_over_xi * theta)
            return store(u, grad.dtype), store(v_new, v.dtype), store(b + x * gamma_over_xi * (1 + b), b_old.dtype)

        treedef = jax.tree.structure(updates)
        out = treedef.flatten_up_to(jax.tree.map(leaf, updates, state.v, state.b, params, _eta_tree(eta, params),
                                                 leaf_layer_axes("scale_by_amos", layer_axes, params)))
        u, v, b = (treedef.unflatten([t[i] for t in out]) for i in range(3))
        return u, ScaleByAmosState(optax.safe_increment(state.count), hp, v, b)

    return transformation("scale_by_amos", init_fn, update_fn)


@declare_optimizer(paper="Tian & Parikh 2022", update="`γ_t=c_tξ²·mean(g²)/v̂`; `θ-=d_t(ξη̃ g/√v̂+½γ_tθ)`",
                   test_kwargs=dict(learning_rate=0.1, eta=1.0))
def amos(learning_rate: ScalarOrSchedule, eta: EtaOrFn, beta: ScalarOrSchedule = 0.999, c_coef: float = 0.25,
         d_coef: float = 0.25, granularity: Granularity = "element", momentum: Optional[ScalarOrSchedule] = None,
         eps: float = 2.0**-125, *, nu_dtype=None, mu_dtype=None, fused: bool = False,
         flat_state: bool = False, layer_axes: LayerAxes = None) -> optax.GradientTransformation:
    r"""Amos: :math:`\theta_t = \theta_{t-1} - \xi_t \bar u_t`, :math:`\bar u_t = \mu \bar u_{t-1} + (1-\mu) u_t`.

    :math:`u_t` from :func:`scale_by_amos` with :math:`\xi` = ``learning_rate``. Algorithm
    1's optional momentum is a moving average (no bias correction) of the steps, as in
    jestimator's ``amos(momentum=...)``; it is taken before the learning rate, which is the
    same for a constant one. Its optional gradient clipping is ``optax.clip`` chained before.

    Args:
        learning_rate: the global learning rate :math:`\xi \ge 0`, a number or a schedule.
        eta, beta, c_coef, d_coef, granularity, eps: as in :func:`scale_by_amos`.
        momentum: :math:`\mu \in [0, 1)`; ``None`` (the default) or 0 for none (no buffer).
        nu_dtype: see :func:`scale_by_amos`.
        mu_dtype: the momentum buffer's dtype, or ``None`` (the params'); ``fused=True`` runs the
            chain for state dtypes other than float32.
        fused: the same update on the CPU as one pass over memory (see :func:`adam`), with
            ``granularity="element"``: the chain writes :math:`u`, :math:`v` and :math:`b` in
            three loops that each read the gradient, :math:`v`, :math:`b` and the params (and
            copies :math:`b` under donation, which two of them read).
        flat_state: with ``fused``, :math:`v`, :math:`b` (and the momentum) as one flat array
            each, as in :func:`adam`.
        layer_axes: per stacked layer slots (see :func:`scale_by_amos`). ``fused`` needs
            ``granularity="element"``, where layers change nothing: the kernel runs with them.
    """
    check_learning_rate("amos", learning_rate)
    check_state_dtype("amos", "mu_dtype", mu_dtype)
    if momentum is not None:
        check_range("amos", "momentum", momentum, 0.0, 1.0, high_open=True)
    _check("amos", eta, beta, c_coef, d_coef, granularity, eps)
    chain = optax.chain(
        scale_by_amos(learning_rate, eta, beta, c_coef, d_coef, granularity, eps, nu_dtype=nu_dtype,
                      layer_axes=layer_axes),
        optax.identity() if is_zero(momentum) else scale_by_ema(momentum, mu_dtype),
        scale_by_learning_rate(learning_rate),
    )
    if fused and granularity != "element":
        raise ValueError(f"amos: fused=True needs granularity='element' (a slot per entry), got {granularity!r}")
    return accelerated("amos", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate, beta=beta,
                       c_coef=c_coef, d_coef=d_coef, momentum=momentum, eps=eps,
                       etas=lambda params: _eta_tree(eta, params), has_momentum=not is_zero(momentum))
