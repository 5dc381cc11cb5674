r"""Shampoo: one Kronecker factor per axis, inverse roots (Gupta, Koren & Singer 2018; Anil et al. 2020).

For each leaf (each layer of it, see ``layer_axes``) of order :math:`k` with gradient :math:`G_t`,
per axis :math:`i` of size at most ``max_preconditioner_dim`` a statistic :math:`S^{(i)}_0 = \epsilon I`
and, at step :math:`t \ge 1` (``count`` :math:`c = t - 1`),

.. math::
    S^{(i)}_t = \beta_2 S^{(i)}_{t-1} + w\, G_{t(i)} G_{t(i)}^\top, \quad w = \begin{cases} 1 & \beta_2 = 1
    \ (\text{the paper's sum}) \\ 1-\beta_2 & \beta_2 < 1 \end{cases}, \qquad
    R^{(i)} = \big(S^{(i)}_t\big)^{-1/(2k)} \ \text{when } c \bmod f = 0 \ (\text{else kept}), \\
    P_t = G_t \times_1 R^{(1)} \cdots \times_k R^{(k)} \quad (\text{a matrix: } L^{-1/4} G R^{-1/4}), \qquad
    D_t = \begin{cases} A_t & c < s \\ \frac{\|A_t\|_F}{\|P_t\|_F} P_t & c \ge s, \text{ grafting} \\
    P_t & c \ge s, \text{ no grafting} \end{cases}, \qquad
    d_t = \beta_1 d_{t-1} + D_t,

where :math:`A_t` is the grafting direction (:math:`G_t` without grafting), :math:`s` the
``start_preconditioning_step`` and an axis without a statistic has :math:`R^{(i)} = I`. With
``block_size`` every block of a layer is preconditioned and grafted as a layer of its own.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store, widen, zeros_in
from optimizers.contract.hyperparams import (check_count, check_range, current_hyperparams, given, init_hyperparams,
                                             static_int)
from optimizers.contract.layers import LayerAxes, check_layer_axes, over_layers, per_layer
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.matrix.blocks import block_axes, block_plans, from_blocks, to_blocks
from optimizers.rules.matrix.kronecker import flag_shape, mode_product, mode_statistic, n_axes, per_axis, per_leaf
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule

GRAFTINGS = ("adam", "adagrad", "rmsprop", "sgd", None)
EIGEN_FLOOR = 1e-6  # eigenvalues below this fraction of the largest are raised to it before the root


def _finite(mats, plan, g):
    """One bool per layer: every statistic and root of that layer (all its blocks) is finite."""
    ok = jnp.ones(g.shape[:plan.k], bool)
    for m in mats:
        ok = ok & jnp.all(jnp.isfinite(m), axis=tuple(range(plan.k, m.ndim)))
    return ok.reshape(flag_shape(g, plan))


def inverse_root(stat, p):
    r""":math:`S^{-1/p}` of a symmetric statistic by ``eigh`` (in at least float32): :math:`V \max(\Lambda,
    10^{-6}\lambda_{max})^{-1/p} V^\top`, the eigenvalues floored at ``EIGEN_FLOOR`` times the largest
    (and at the dtype's smallest normal number)."""
    s = widen(stat)
    w, v = jnp.linalg.eigh(s)
    floor = jnp.maximum(EIGEN_FLOOR * jnp.max(w), jnp.finfo(s.dtype).tiny)
    return (v * (jnp.maximum(w, floor) ** (-1.0 / p))[None, :]) @ v.T


def _layer_norm(x, k):
    """The Frobenius norm of each layer (the axes after the first ``k``), kept as size-1 axes."""
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(k, x.ndim)), keepdims=True))


# ---------------------------------------------------------------------------------------------
# The transform


@declare_state(nonnegative=("graft_nu",), elementwise=False)
class ScaleByShampooState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1", "b2", "graft_b2", "graft_eps"}
    mu: optax.Updates  # d_t, the momentum of the grafted direction
    graft_nu: optax.Updates  # the grafting's sum / average of G² (zeros for "sgd" and None)
    stats: tuple  # per axis i a tree of the params' structure: S^{(i)}, (layers..., d_i, d_i), or optax.MaskedNode
    roots: tuple  # per axis i: R^{(i)} = S^{(i)-1/(2k)} as last refreshed, the same shapes
    finite: optax.Updates  # per leaf, bool of shape (layers..., 1, ...): its statistics and roots are finite


def _check(owner, b1, b2, eps, precondition_frequency, start_preconditioning_step, max_preconditioner_dim,
           grafting, graft_b2, graft_eps):
    check_range(owner, "b1", b1, 0.0, 1.0, high_open=True)
    check_range(owner, "b2", b2, 0.0, 1.0, low_open=True)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "graft_b2", graft_b2, 0.0, 1.0, high_open=True)
    check_range(owner, "graft_eps", graft_eps, 0.0)
    check_count(owner, "precondition_frequency", precondition_frequency, traced_ok=True)
    check_count(owner, "max_preconditioner_dim", max_preconditioner_dim, traced_ok=True)
    if isinstance(start_preconditioning_step, bool) or not isinstance(start_preconditioning_step, (int, jax.Array)) \
            or (isinstance(start_preconditioning_step, int) and start_preconditioning_step < 0):
        raise ValueError(f"{owner}: start_preconditioning_step must be an int >= 0, got {start_preconditioning_step!r}")
    if grafting not in GRAFTINGS:
        raise ValueError(f"{owner}: grafting must be one of {GRAFTINGS}, got {grafting!r}")


def _graft(g, nu, grafting, hp, t):
    """The grafting direction :math:`A_t` and the new accumulator, elementwise."""
    if grafting in (None, "sgd"):
        return g, nu
    if grafting == "adagrad":
        nu = nu + g * g
        return g / (jnp.sqrt(nu) + hp["graft_eps"]), nu
    b = hp["graft_b2"]
    nu = b * nu + (1 - b) * g * g
    if grafting == "adam":
        return g / (jnp.sqrt(nu / (1 - b**t)) + hp["graft_eps"]), nu
    return g / (jnp.sqrt(nu) + hp["graft_eps"]), nu


def scale_by_shampoo(b1: ScalarOrSchedule = 0.0, b2: ScalarOrSchedule = 1.0, eps: float = 1e-6,
                     precondition_frequency: int = 1, start_preconditioning_step: int = 0,
                     max_preconditioner_dim: int = 8192, block_size: Optional[int] = None,
                     grafting: Optional[str] = None,
                     graft_b2: ScalarOrSchedule = 0.999, graft_eps: ScalarOrSchedule = 1e-8, *,
                     layer_axes: LayerAxes = None, mu_dtype=None, nu_dtype=None,
                     precond_dtype=None) -> optax.GradientTransformation:
    r"""Shampoo's direction (no learning rate, no weight decay): per axis a statistic, its inverse root.

    At ``count`` :math:`c` (step :math:`t = c+1`), with :math:`k` the order of a layer:

    .. math::
        S^{(i)} \leftarrow \beta_2 S^{(i)} + w\, G_{(i)} G_{(i)}^\top, \qquad
        R^{(i)} \leftarrow \big(S^{(i)}\big)^{-1/(2k)} \text{ if } c \bmod f = 0, \qquad
        P = G \times_i R^{(i)}, \\
        D = \begin{cases} A & c < s \\ (\|A\|_F / \|P\|_F)\, P & \text{grafting} \\ P & \text{no grafting}
        \end{cases}, \qquad d_t = \beta_1 d_{t-1} + D,

    :math:`S^{(i)}_0 = \epsilon I`, :math:`w = 1` at :math:`\beta_2 = 1` (the paper's sum) and
    :math:`1-\beta_2` below; the norms are per layer. With the defaults (``b2=1``, ``f=1``, no
    grafting, ``b1=0``) this is Algorithm 1 (matrices) and 2 (tensors) of the paper.

    The roots are computed by ``eigh`` in at least float32, the eigenvalues floored at
    :math:`10^{-6}\lambda_{max}` (``EIGEN_FLOOR``; in exact arithmetic they are at least
    :math:`\beta_2^t\epsilon`, but float32's ``eigh`` can return the small ones negative), inside
    the compiled step under :func:`jax.lax.cond`; between refreshes the stored roots are used.
    The first call (``count`` 0) always refreshes.

    Grafting directions :math:`A` (Anil et al. 2020, section 3.2; elementwise, their own
    accumulator :math:`\nu`): ``"sgd"``: :math:`G`; ``"adagrad"``: :math:`\nu \mathrel{+}= G^2`,
    :math:`G/(\sqrt\nu+\epsilon_g)`; ``"rmsprop"``: :math:`\nu = \beta_g\nu + (1-\beta_g)G^2`,
    :math:`G/(\sqrt\nu+\epsilon_g)`; ``"adam"``: the same :math:`\nu`,
    :math:`G/(\sqrt{\nu/(1-\beta_g^t)}+\epsilon_g)` (Adam's denominator; the momentum is
    :math:`\beta_1`'s, on :math:`D`); ``None``: no rescaling (and :math:`A = G` before :math:`s`).

    Vectors (a layer of order 1) get one statistic :math:`S = \epsilon I + \sum g g^\top` and
    :math:`S^{-1/2} g`: the paper's order-:math:`k` rule at :math:`k = 1` (full-matrix AdaGrad), as
    ``pytorch_optimizer.Shampoo``; a vector longer than ``max_preconditioner_dim`` (and a scalar)
    gets :math:`P = G`. An axis longer than ``max_preconditioner_dim`` has no statistic
    (:math:`R = I`); :math:`k` stays the layer's order. With ``block_size`` each block is
    preconditioned (and grafted) as a layer of its own; inside the step the axes are zero-padded
    to whole blocks, which adds zero rows to the statistics and leaves the blocks' updates exact.

    The state's ``finite`` (per leaf, one bool per layer) is ``False`` once a statistic or a root of
    that layer is not finite; that layer's direction is then NaN.

    .. warning::
        ``pytorch_optimizer.Shampoo`` (4.1.0) computes this with ``b2=1``, no grafting,
        ``start_preconditioning_step=0``, ``precondition_frequency=1`` and ``b1=0`` (its
        ``matrix_eps`` is :math:`\epsilon`; its roots by SVD, without a floor). Its ``momentum``
        differs (it mixes the raw gradient with the last preconditioned direction, before the
        statistics), and with ``preconditioning_compute_steps > 1`` its roots start at zero (no step
        until the first refresh at step :math:`f`), where ours are refreshed at steps
        :math:`1, f+1, 2f+1, \ldots`. optax has no Shampoo.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`, heavy-ball momentum on the grafted direction (Anil et al.'s
            ``beta1`` without ``moving_average_for_momentum``).
        b2: :math:`\beta_2 \in (0, 1]` of the statistics; 1: their sum (the paper).
        eps: :math:`\epsilon > 0`, the statistics' start :math:`\epsilon I` (a number: it is used
            once, at ``init``).
        precondition_frequency: :math:`f > 0`, steps between the roots' refreshes.
        start_preconditioning_step: :math:`s \ge 0`: the first :math:`s` steps take the grafting
            direction alone (the statistics are accumulated from the first).
        max_preconditioner_dim: the largest axis given a statistic (> 0), before blocking.
        block_size: ``None``, or the longest block (> 0): an axis longer than it is cut into blocks
            of this length (the last one shorter when it does not divide the axis), and every block
            of a layer (one per combination of the axes' blocks) gets its own statistics, roots and
            grafting norm (Anil et al. 2020, section 3.4).
        grafting: ``"adam"``, ``"adagrad"``, ``"rmsprop"``, ``"sgd"`` or ``None``.
        graft_b2: :math:`\beta_g \in [0, 1)` of the ``"rmsprop"`` and ``"adam"`` grafting.
        graft_eps: :math:`\epsilon_g \ge 0` of the ``"adagrad"``, ``"rmsprop"``, ``"adam"`` grafting.
        layer_axes: the leading axes of each leaf that index stacked layers: each layer gets its
            own statistics, roots and grafting norm (see :func:`~optimizers.layer_axes_from_flax`).
        mu_dtype, nu_dtype: the dtypes of :math:`d` and of the grafting's :math:`\nu` (``None``:
            the params').
        precond_dtype: the dtype the statistics and roots are kept in (``None``: the params'); the
            statistics' update and the roots are computed in at least float32.

    References:
        Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018,
        Algorithms 1 and 2. Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order Optimization
        for Deep Learning", arXiv:2002.09018, 2020 (exponential averages, grafting, delayed and
        periodic roots, large dimensions left out).
    """
    owner = "scale_by_shampoo"
    _check(owner, b1, b2, eps, precondition_frequency, start_preconditioning_step, max_preconditioner_dim,
           grafting, graft_b2, graft_eps)
    if block_size is not None:
        check_count(owner, "block_size", block_size)
    check_layer_axes(owner, layer_axes)
    for name, dt in (("mu_dtype", mu_dtype), ("nu_dtype", nu_dtype), ("precond_dtype", precond_dtype)):
        check_state_dtype(owner, name, dt)
    values = given(b1=b1, b2=b2, graft_b2=graft_b2, graft_eps=graft_eps)
    max_dim = static_int(max_preconditioner_dim)

    def plans_of(tree, state=None):
        if max_dim is None:
            return block_plans(owner, tree, layer_axes, None, block_size, state.stats)
        return block_plans(owner, tree, layer_axes, max_dim, block_size)

    def init_fn(params):
        if max_dim is None:
            raise jax.errors.ConcretizationTypeError(
                max_preconditioner_dim, f"{owner}: max_preconditioner_dim decides which axes get a statistic "
                "(the state's shapes): under optax.inject_hyperparams, name it in static_args")
        reject_complex(owner, params, "Shampoo's statistics are real, as in the paper")
        plans = plans_of(params)
        leaves, treedef = jax.tree.flatten(params)
        stats, roots = [], []
        for p, plan in zip(leaves, plans):
            dt = p.dtype if precond_dtype is None else jax.dtypes.canonicalize_dtype(precond_dtype)
            lead = p.shape[:plan.k] + (plan.ns if plan.blocked else ())
            dims = [c for c, on in zip(plan.cs, plan.on) if on]
            stats.append(tuple(jnp.broadcast_to(eps * jnp.eye(d, dtype=dt), lead + (d, d)) for d in dims))
            roots.append(tuple(jnp.broadcast_to(jnp.eye(d, dtype=dt), lead + (d, d)) for d in dims))
        n = n_axes(plans)
        return ScaleByShampooState(
            jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
            zeros_in(params, nu_dtype),
            per_axis(stats, treedef, plans, n), per_axis(roots, treedef, plans, n),
            treedef.unflatten([jnp.ones(flag_shape(p, plan), bool) for p, plan in zip(leaves, plans)]))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        beta1, beta2 = hp["b1"], hp["b2"]
        w = jnp.where(beta2 == 1, 1.0, 1 - beta2).astype(beta2.dtype)
        c = state.count
        t = (c + 1).astype(beta2.dtype)
        plans = plans_of(updates, state)
        leaves, treedef = jax.tree.flatten(updates)
        stats_in = per_leaf(state.stats, treedef, plans)
        roots_in = per_leaf(state.roots, treedef, plans)

        new_stats = []
        for g, ss, plan in zip(leaves, stats_in, plans):
            def statistics(g, ss, plan=plan):
                axes = [a for a, on in enumerate(plan.on) if on]
                return tuple(store(beta2 * widen(s) + w * mode_statistic(g, a), s.dtype) for s, a in zip(ss, axes))
            new_stats.append(over_layers(statistics, plan.k + block_axes(plan))(to_blocks(widen(g), plan), ss))

        def refresh(ss):
            out = []
            for s_leaf, plan in zip(ss, plans):
                root = over_layers(lambda s, p=2 * len(plan.inner): inverse_root(s, p), plan.k + block_axes(plan))
                out.append(tuple(store(root(s), s.dtype) for s in s_leaf))
            return out

        new_roots = lax.cond(c % precondition_frequency == 0, refresh, lambda _: list(roots_in), new_stats)
        new_roots = [tuple(r) for r in new_roots]
        preconditioning = c >= start_preconditioning_step
        out, new_mu, new_nu = [], [], []
        for g, m, nu, rs, plan in zip(leaves, jax.tree.leaves(state.mu), jax.tree.leaves(state.graft_nu),
                                      new_roots, plans):

            def precondition(g, rs, plan=plan):
                it = iter(rs)
                for axis, on in enumerate(plan.on):
                    if on:
                        g = mode_product(g, next(it), axis)
                return g

            gw = widen(g)
            a, nu2 = _graft(gw, widen(nu), grafting, hp, t)
            kb = plan.k + block_axes(plan)
            pdir = over_layers(precondition, kb)(to_blocks(gw, plan), tuple(map(widen, rs)))
            if grafting is not None:
                pn, an = _layer_norm(pdir, kb), _layer_norm(to_blocks(a, plan), kb)
                pdir = jnp.where(pn > 0, pdir * (an / jnp.where(pn > 0, pn, 1)), 0)
            pdir = from_blocks(pdir, plan)
            d = jnp.where(preconditioning, pdir, a)
            m2 = beta1 * widen(m) + d
            out.append(m2)
            new_mu.append(store(m2, m.dtype))
            new_nu.append(store(nu2, nu.dtype))

        finite = [_finite(ss + rs, plan, g) for ss, rs, g, plan in zip(new_stats, new_roots, leaves, plans)]
        out = [jnp.where(per_layer(f, u), u, jnp.nan).astype(g.dtype) for u, f, g in zip(out, finite, leaves)]
        n = n_axes(plans)
        new_state = ScaleByShampooState(optax.safe_increment(c), hp, treedef.unflatten(new_mu),
                                        treedef.unflatten(new_nu), per_axis(new_stats, treedef, plans, n),
                                        per_axis(new_roots, treedef, plans, n), treedef.unflatten(finite))
        return treedef.unflatten(out), new_state

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Gupta et al. 2018",
                   update=("per axis `S=β₂S+wGGᵀ` from `εI` (`w=1` at `β₂=1`, else `1-β₂`), "
                           "roots every `f` steps: `d=β₁d+L^{-1/4}GR^{-1/4}` "
                           "(order k: `×ᵢSᵢ^{-1/(2k)}`; grafting optional); `θ-=γ(d+λθ)`"),
                   test_kwargs=dict(learning_rate=0.005, b1=0.9, eps=0.1, precondition_frequency=2,
                                    start_preconditioning_step=1, grafting="adam"))
def shampoo(learning_rate: ScalarOrSchedule = 1e-3, b1: ScalarOrSchedule = 0.0, b2: ScalarOrSchedule = 1.0,
            eps: float = 1e-6, weight_decay: ScalarOrSchedule = 0.0, precondition_frequency: int = 1,
            start_preconditioning_step: int = 0, max_preconditioner_dim: int = 8192,
            block_size: Optional[int] = None, grafting: Optional[str] = None,
            graft_b2: ScalarOrSchedule = 0.999, graft_eps: ScalarOrSchedule = 1e-8, mask: MaskOrFn = None, *,
            layer_axes: LayerAxes = None, mu_dtype=None, nu_dtype=None, precond_dtype=None
            ) -> optax.GradientTransformation:
    r"""Shampoo: :math:`\theta_t = \theta_{t-1} - \eta_t (d_t + \lambda\theta_{t-1})` (:func:`scale_by_shampoo`).

    .. math::
        d_t = \beta_1 d_{t-1} + L_t^{-1/4} G_t R_t^{-1/4} \quad (\text{a matrix, no grafting}), \qquad
        L_t = \beta_2 L_{t-1} + w\,G_tG_t^\top, \quad R_t = \beta_2 R_{t-1} + w\,G_t^\top G_t.

    The defaults are the paper's Shampoo (sums of the statistics, roots every step, no grafting,
    no momentum). The decay :math:`\lambda\theta` (leaves chosen by ``mask``) is added after the
    momentum and scaled by the learning rate (decoupled, as ``optimizers.adamw``).

    .. warning::
        ``pytorch_optimizer.Shampoo`` matches with the defaults (``b1=0``, ``weight_decay=0``); its
        momentum and roots before the first refresh differ (see :func:`scale_by_shampoo`).
        optax has no Shampoo.

    Args:
        learning_rate: :math:`\eta \ge 0`, a number or a schedule.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which leaves are decayed (a tree of booleans, a prefix, or a function of the params).
        b1, b2, eps, precondition_frequency, start_preconditioning_step: as in :func:`scale_by_shampoo`.
        max_preconditioner_dim, grafting, graft_b2, graft_eps: as in :func:`scale_by_shampoo`.
        block_size, layer_axes, mu_dtype, nu_dtype, precond_dtype: as in :func:`scale_by_shampoo`.

    References:
        Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018.
        Anil et al., "Scalable Second Order Optimization for Deep Learning", arXiv:2002.09018, 2020.
    """
    return optax.chain(
        scale_by_shampoo(b1, b2, eps, precondition_frequency, start_preconditioning_step, max_preconditioner_dim,
                         block_size, grafting, graft_b2, graft_eps, layer_axes=layer_axes, mu_dtype=mu_dtype,
                         nu_dtype=nu_dtype, precond_dtype=precond_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
