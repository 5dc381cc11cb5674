"""DoG, Distance over Gradients: SGD with a step size from the distance travelled (Ivgi, Hinder & Carmon 2023)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex, store, widen
from optimizers.contract.hyperparams import check_learning_rate, check_range, float_dtype
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule

INIT_STEPS = ("distance", "learning_rate", "heuristic")


@declare_state(elementwise=False)
class ScaleByDogState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"eta": eta_t}: the step size of the latest update (written, not read)
    init_params: optax.Params  # x_0
    max_dist: jax.Array  # r-bar_t = max(r_eps, max_k ||x_k - x_0||)
    sum_sq_norm_grads: jax.Array  # G_t = sum_k ||g_k||^2


def _sum_sq(tree):
    return sum((jnp.sum(jnp.square(widen(x))) for x in jax.tree.leaves(tree)), jnp.zeros([], float_dtype()))


def _check_init_step(owner, init_step):
    pair = isinstance(init_step, (tuple, list)) and len(init_step) == 2
    if not pair or init_step[0] not in INIT_STEPS or not isinstance(init_step[1], (int, float)) \
            or not init_step[1] > 0 or math.isinf(init_step[1]):
        raise ValueError(f"{owner}: init_step must be a pair (tag, value) with tag in {INIT_STEPS} and a finite "
                         f"value > 0, got {init_step!r}")


def scale_by_dog(init_step: tuple[str, float] = ("heuristic", 1e-6), eps: float = 1e-8
                 ) -> optax.GradientTransformation:
    r"""DoG's step: the gradient times :math:`\eta_t`, the distance travelled over the root of the summed squared norms.

    .. math::
        \bar r_t = \max\big(r_\epsilon, \max_{k \le t} \|x_k - x_0\|\big), \quad
        G_t = \sum_{k \le t} \|g_k\|^2, \quad
        \eta_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}, \quad
        u_t = \eta_t g_t

    with norms over the whole model (global sums: the same under sharded ``jit``). ``init_step``
    (optax's): ``("heuristic", α)`` sets :math:`r_\epsilon = α(1 + \|x_0\|)` (the paper's
    default, α = 1e-6; 1e-4 with batch normalization, its authors advise), ``("distance", r)``
    sets :math:`r_\epsilon = r`, and ``("learning_rate", η)`` takes :math:`\eta_0 = η` at the first
    step and :math:`r_\epsilon = 0`. The heuristic needs the real params at ``init``.
    :math:`\eta_t` is ``optimizers.get_hyperparams(state)["eta"]`` (0 before the first update).

    .. warning::
        The paper's :math:`\eta_t` has no :math:`\epsilon`; optax's (and this) adds it under the
        root (a difference of :math:`\epsilon/2G_t` relative, nil unless the gradients vanish).

    Args:
        init_step: ``(tag, value)``, tag one of ``"distance"``, ``"learning_rate"``, ``"heuristic"``,
            value finite and > 0.
        eps: :math:`\epsilon \ge 0` under the root.

    References:
        Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023, Algorithm 1 (DoG) and Section 3 (:math:`r_\epsilon`).
    """
    owner = "scale_by_dog"
    _check_init_step(owner, init_step)
    check_range(owner, "eps", eps, 0.0)
    tag, value = init_step[0], float(init_step[1])

    def init_fn(params):
        reject_complex("dog", params, "optax's DoG takes real norms; complex leaves are not defined there")
        dt = float_dtype()
        if tag == "heuristic":
            r_eps = value * (1 + jnp.sqrt(_sum_sq(params)))
        else:
            r_eps = jnp.asarray(value if tag == "distance" else 0.0, dt)
        return ScaleByDogState(jnp.zeros([], jnp.int32), {"eta": jnp.zeros([], dt)},
                               jax.tree.map(jnp.array, params), r_eps.astype(dt), jnp.zeros([], dt))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        dist = jnp.sqrt(_sum_sq(jax.tree.map(lambda a, b: widen(a) - widen(b), state.init_params, params)))
        max_dist = jnp.maximum(state.max_dist, dist)
        g2 = state.sum_sq_norm_grads + _sum_sq(updates)
        eta = max_dist / jnp.sqrt(g2 + eps)
        if tag == "learning_rate":
            eta = jnp.where(state.count == 0, jnp.asarray(value, eta.dtype), eta)
        out = jax.tree.map(lambda g: store(eta * widen(g), g.dtype), updates)
        return out, ScaleByDogState(optax.safe_increment(state.count), {"eta": eta}, state.init_params, max_dist, g2)

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Ivgi, Hinder & Carmon 2023",
                   update="`r̄=max(r̄,‖θ-θ₀‖); G+=‖g‖²; θ-=γ r̄/√(G+ε)·g`",
                   test_kwargs=dict(learning_rate=1.0, init_step=("distance", 1e-2)))
def dog(learning_rate: ScalarOrSchedule = 1.0, init_step: tuple[str, float] = ("heuristic", 1e-6),
        eps: float = 1e-8, weight_decay: Optional[ScalarOrSchedule] = None,
        mask: MaskOrFn = None) -> optax.GradientTransformation:
    r"""DoG: :math:`x_{t+1} = x_t - \gamma_t \eta_t g_t` (:func:`scale_by_dog`).

    ``optax.contrib.dog``'s keywords, order and defaults (tested equal to it). ``weight_decay``
    :math:`\lambda` adds :math:`\lambda x_t` to :math:`g_t` before DoG sees it (so it enters
    :math:`G_t`), on the leaves ``mask`` selects; ``None`` (the default) leaves the link out.
    ``learning_rate`` multiplies :math:`\eta_t` (1: DoG itself; a schedule peaking at 1).

    The authors recommend averaging the iterates (:func:`~optimizers.weight_ema` or :func:`~optimizers.swa` on top).

    References:
        Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule", ICML 2023.
    """
    check_learning_rate("dog", learning_rate)
    check_range("dog", "weight_decay", weight_decay, 0.0)
    decay = [] if weight_decay is None else [add_decayed_weights(weight_decay, mask)]
    return optax.chain(*decay, scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))


@declare_state(elementwise=False)
class ScaleByDowgState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"eta": eta_t}: the step size of the latest update (written, not read)
    init_params: optax.Params  # x_0
    estim_sq_dist: jax.Array  # r-bar_t^2 = max(r_eps^2, max_k ||x_k - x_0||^2)
    weighted_sq_norm_grads: jax.Array  # v_t = sum_k r-bar_k^2 ||g_k||^2


def scale_by_dowg(init_estim_sq_dist: Optional[float] = None, eps: float = 1e-4) -> optax.GradientTransformation:
    r"""DoWG's step: the gradient times :math:`\eta_t`, the squared distance over the root of the weighted squared norms.

    .. math::
        \bar r_t^2 = \max\big(\bar r_{t-1}^2, \|x_t - x_0\|^2\big), \quad
        v_t = v_{t-1} + \bar r_t^2 \|g_t\|^2, \quad
        \eta_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}, \quad
        u_t = \eta_t g_t

    with :math:`\bar r_{-1}^2` = ``init_estim_sq_dist`` (``None``: :math:`\epsilon`), :math:`v_{-1} = 0`
    and norms over the whole model (global sums: the same under sharded ``jit``).
    :math:`\eta_t` is ``optimizers.get_hyperparams(state)["eta"]`` (0 before the first update).

    .. warning::
        The paper's :math:`\eta_t` has no :math:`\epsilon`; optax's (and this) adds it to the root
        (``eps=0`` with ``init_estim_sq_dist`` given is the paper's), and optax's default starts
        :math:`\bar r^2` at ``eps`` too.

    Args:
        init_estim_sq_dist: :math:`\bar r_\epsilon^2 > 0`, the initial squared-distance estimate.
        eps: :math:`\epsilon \ge 0` (> 0 when ``init_estim_sq_dist`` is ``None``).

    References:
        Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free Gradient
        Descent Method", NeurIPS 2023, Algorithm 1 (DoWG).
    """
    owner = "scale_by_dowg"
    _check_dowg(owner, init_estim_sq_dist, eps)
    r2_0 = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init_fn(params):
        reject_complex("dowg", params, "optax's DoWG takes real norms; complex leaves are not defined there")
        dt = float_dtype()
        return ScaleByDowgState(jnp.zeros([], jnp.int32), {"eta": jnp.zeros([], dt)},
                                jax.tree.map(jnp.array, params), jnp.asarray(r2_0, dt), jnp.zeros([], dt))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        sq_dist = _sum_sq(jax.tree.map(lambda a, b: widen(a) - widen(b), state.init_params, params))
        r2 = jnp.maximum(state.estim_sq_dist, sq_dist)
        v = r2 * _sum_sq(updates) + state.weighted_sq_norm_grads
        eta = r2 / (jnp.sqrt(v) + eps)
        out = jax.tree.map(lambda g: store(eta * widen(g), g.dtype), updates)
        return out, ScaleByDowgState(optax.safe_increment(state.count), {"eta": eta}, state.init_params, r2, v)

    return transformation(owner, init_fn, update_fn)


def _check_dowg(owner, init_estim_sq_dist, eps):
    check_range(owner, "init_estim_sq_dist", init_estim_sq_dist, 0.0, low_open=True)
    check_range(owner, "eps", eps, 0.0)
    if init_estim_sq_dist is None and isinstance(eps, (int, float)) and eps == 0:
        raise ValueError(f"{owner}: eps must be > 0 when init_estim_sq_dist is None (it is the initial estimate), "
                         f"got {eps!r}")


@declare_optimizer(paper="Khaled, Mishchenko & Jin 2023",
                   update="`r̄²=max(r̄²,‖θ-θ₀‖²); v+=r̄²‖g‖²; θ-=γ r̄²/(√v+ε)·g`",
                   test_kwargs=dict(learning_rate=1.0, init_estim_sq_dist=1e-4))
def dowg(learning_rate: ScalarOrSchedule = 1.0, init_estim_sq_dist: Optional[float] = None, eps: float = 1e-4,
         weight_decay: Optional[ScalarOrSchedule] = None, mask: MaskOrFn = None) -> optax.GradientTransformation:
    r"""DoWG: :math:`x_{t+1} = x_t - \gamma_t \eta_t g_t` (:func:`scale_by_dowg`).

    ``optax.contrib.dowg``'s keywords, order and defaults (tested equal to it). ``weight_decay``
    :math:`\lambda` adds :math:`\lambda x_t` to :math:`g_t` before DoWG sees it, on the leaves
    ``mask`` selects; ``None`` (the default) leaves the link out. ``learning_rate`` multiplies
    :math:`\eta_t` (1: DoWG itself).

    .. warning::
        :math:`\epsilon` is added to the root of :math:`v_t` (optax's; the paper has none) and
        starts :math:`\bar r^2` when ``init_estim_sq_dist`` is ``None``.

    References:
        Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free Gradient
        Descent Method", NeurIPS 2023.
    """
    check_learning_rate("dowg", learning_rate)
    check_range("dowg", "weight_decay", weight_decay, 0.0)
    _check_dowg("dowg", init_estim_sq_dist, eps)
    decay = [] if weight_decay is None else [add_decayed_weights(weight_decay, mask)]
    return optax.chain(*decay, scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate))
