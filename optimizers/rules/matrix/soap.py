r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024).

For each leaf (each layer of it, see ``layer_axes``) with gradient :math:`G_t` and, per
preconditioned axis :math:`i`, a statistic :math:`L^{(i)}` and an orthogonal basis :math:`Q^{(i)}`,
the authors' ``soap.py`` (github.com/nikhilvyas/SOAP) computes, at its step :math:`t \ge 1`
(the call after the first; the first call only builds the bases):

.. math::
    \tilde G_t = G_t \times_i Q^{(i)\top}, \qquad
    m_t = \beta_1 m_{t-1} + (1-\beta_1) G_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde G_t^2, \\
    N_t = \Big(\frac{m_t \times_i Q^{(i)\top}}{\sqrt{v_t} + \epsilon}\Big) \times_i Q^{(i)}, \qquad
    \theta_t = \big(\theta_{t-1} - \eta \tfrac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} N_t\big)(1 - \eta\lambda), \\
    L^{(i)} \leftarrow \beta_s L^{(i)} + (1-\beta_s)\, G_{t(i)} G_{t(i)}^\top, \qquad
    Q^{(i)} \leftarrow \mathrm{QR}\big(L^{(i)} Q^{(i)}_{\sigma}\big) \ \text{when } t \bmod f = 0,

where :math:`\sigma` sorts the columns of :math:`Q^{(i)}` by the estimated eigenvalues
:math:`\mathrm{diag}(Q^\top L Q)`, decreasing, and permutes axis :math:`i` of :math:`v` the same
way. The first call sets :math:`L^{(i)} = (1-\beta_s) G_{1(i)} G_{1(i)}^\top` and :math:`Q^{(i)}`
to its eigenvectors (``eigh``, decreasing eigenvalues) and leaves the parameters unchanged.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store, widen, zeros_in
from optimizers.contract.hyperparams import (check_count, check_learning_rate, check_range, current_hyperparams, given,
                                             init_hyperparams, static_int)
from optimizers.contract.layers import LayerAxes, check_layer_axes, leaf_layer_axes, over_layers, per_layer
from optimizers.contract.masks import leaf_masks
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.matrix.kronecker import (eigenbasis, flag_shape, merge_small_dims, mode_statistic, n_axes, per_axis,
                                              per_leaf, project)
from optimizers.rules.scaling import MaskOrFn
from schedules import ScalarOrSchedule


# ---------------------------------------------------------------------------------------------
# Which axes of a layer are preconditioned


class _Plan(NamedTuple):
    """One leaf: its layer axes ``k``, each layer's shape after merging, and which of those axes have a basis."""
    k: int
    merged: tuple
    on: tuple  # one bool per axis of ``merged``


def _plan(shape: tuple, k: int, max_dim: int, merge: bool, precondition_1d: bool) -> _Plan:
    inner = tuple(shape[k:])
    if len(inner) == 0:
        return _Plan(k, (), ())
    if len(inner) == 1:  # the authors' 1-D rule: no merging, a basis only with precondition_1d
        return _Plan(k, inner, (precondition_1d and inner[0] <= max_dim,))
    merged = merge_small_dims(inner, max_dim) if merge else inner
    return _Plan(k, merged, tuple(d <= max_dim for d in merged))


def _plans(owner, tree, layer_axes, max_dim, merge, precondition_1d):
    ks = jax.tree.leaves(leaf_layer_axes(owner, layer_axes, tree))
    return [_plan(tuple(x.shape), k, max_dim, merge, precondition_1d) for x, k in zip(jax.tree.leaves(tree), ks)]


def _layers(x, plan: _Plan):
    """``x`` (a leaf) as its layer shape + the merged shape of a layer."""
    return x.reshape(x.shape[:plan.k] + plan.merged)


def _full(bases, plan: _Plan):
    """The list of bases of a layer with ``None`` at the axes without one."""
    it = iter(bases)
    return [next(it) if on else None for on in plan.on]


def _finite_layers(mats, g, plan: _Plan):
    """One bool per layer: every matrix of that layer is finite (reduced over the non-layer axes only)."""
    ok = jnp.ones(g.shape[:plan.k], bool)
    for m in mats:
        ok = ok & jnp.all(jnp.isfinite(m), axis=(-2, -1))
    return ok.reshape(flag_shape(g, plan))


# ---------------------------------------------------------------------------------------------
# The transform


@declare_state(nonnegative=("nu",), elementwise=False)
class ScaleBySoapState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far (the first builds the bases only)
    hyperparams: dict  # {"b1", "b2", "eps"} and "shampoo_beta" when given
    mu: optax.Updates  # m_t, in the params' basis
    nu: optax.Updates  # v_t, in the eigenbasis (each leaf in its own shape)
    stats: tuple  # per axis i a tree of the params' structure: L^{(i)}, (layers..., d_i, d_i), or optax.MaskedNode
    bases: tuple  # per axis i: Q^{(i)}, the same shapes
    finite: optax.Updates  # per leaf, bool of shape (layers..., 1, ...): its statistics and bases are finite


def _check_soap(owner, b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim):
    check_range(owner, "b1", b1, 0.0, 1.0, high_open=True)
    check_range(owner, "b2", b2, 0.0, 1.0, high_open=True)
    if shampoo_beta is not None:
        check_range(owner, "shampoo_beta", shampoo_beta, 0.0, 1.0, high_open=True)
    check_range(owner, "eps", eps, 0.0)
    check_count(owner, "precondition_frequency", precondition_frequency, traced_ok=True)
    check_count(owner, "max_precond_dim", max_precond_dim, traced_ok=True)


def _plans_from_state(owner, tree, layer_axes, stats):
    """The plans when ``max_precond_dim`` is traced (``optax.inject_hyperparams`` makes it an array):
    read from which axes have a statistic in the state (``merge_dims=False``)."""
    treedef = jax.tree.structure(tree)
    columns = [treedef.flatten_up_to(t) for t in stats]
    ks = jax.tree.leaves(leaf_layer_axes(owner, layer_axes, tree))
    plans = []
    for j, (x, k) in enumerate(zip(jax.tree.leaves(tree), ks)):
        inner = tuple(x.shape[k:])
        on = tuple(i < len(columns) and not isinstance(columns[i][j], optax.MaskedNode) for i in range(len(inner)))
        plans.append(_Plan(k, inner, on))
    return plans


def _qr_refresh(stats, bases, nu, plan: _Plan):
    """One layer's power iteration and QR (the authors' ``get_orthogonal_matrix_QR``), axis by axis."""
    out, it = [], iter(zip(stats, bases))
    for axis, on in enumerate(plan.on):
        if not on:
            continue
        s, q = next(it)
        sq = s @ q
        order = jnp.argsort(-jnp.sum(q * sq, axis=0), stable=True)
        nu = jnp.take(nu, order, axis=axis)
        new_q, _ = jnp.linalg.qr(sq[:, order])
        out.append(new_q)
    return tuple(out), nu


def scale_by_soap(b1: ScalarOrSchedule = 0.95, b2: ScalarOrSchedule = 0.95,
                  shampoo_beta: Optional[ScalarOrSchedule] = None, eps: ScalarOrSchedule = 1e-8,
                  precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
                  precondition_1d: bool = False, normalize_grads: bool = False, correct_bias: bool = True, *,
                  layer_axes: LayerAxes = None, mu_dtype=None, nu_dtype=None,
                  precond_dtype=None) -> optax.GradientTransformation:
    r"""SOAP's direction (no learning rate, no weight decay): Adam in the eigenbasis of Shampoo's statistics.

    At ``count`` :math:`c = 0` the statistics and bases are built and the direction is zero (the
    authors' first step updates nothing); at :math:`c \ge 1`, with :math:`t = c`,

    .. math::
        d_t = s_t\, \Big(\frac{m_t \times_i Q^{(i)\top}}{\sqrt{v_t} + \epsilon}\Big) \times_i Q^{(i)},
        \qquad s_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} \ (\text{or } 1 \text{ without bias correction}),

    with :math:`m_t, v_t` and the bases as in the module's equations; then the statistics are
    updated with :math:`G_t` and, when :math:`t \bmod f = 0`, the bases are refreshed by one power
    iteration and a QR decomposition. ``normalize_grads`` divides :math:`d_t` by
    :math:`10^{-30} + \mathrm{RMS}(d_t)` per layer (before :math:`s_t`).

    Each layer (``layer_axes``) of a leaf is reshaped (``merge_dims``: consecutive axes merged
    while their product is at most ``max_precond_dim``) and every axis of size at most
    ``max_precond_dim`` gets a statistic and a basis; the others (and vectors, unless
    ``precondition_1d``) are left in the parameters' basis, so a vector or a scalar leaf gets
    Adam with :math:`\beta_1, \beta_2`. The eigendecomposition (first call) and the QR refresh
    run inside the compiled step under :func:`jax.lax.switch`; the program compiles once.

    The state's ``finite`` (per leaf, one bool per layer) is ``False`` once a statistic or a
    basis of that layer is not finite (say a :math:`GG^\top` that overflows); that layer's
    direction is then NaN. It is per layer so that a stack sharded on its layer axis needs no
    communication. (:func:`~optimizers.apply_if_finite` and optax's test the gradients, not the
    updates: a non-finite gradient is skipped with the state kept; a statistic that overflows
    from finite gradients shows as NaN params and ``finite == False``.)

    .. warning::
        ``pytorch_optimizer.SOAP`` (4.1.0) divides by :math:`\mathrm{RMS} + \epsilon` with
        ``normalize_gradient`` (the authors: :math:`10^{-30} + \mathrm{RMS}`), and its
        ``merge_dims`` merges differently (it reshapes a shape whose product is at most
        ``max_precondition_dim`` to ``[1]``); without these two options it computes this. optax
        has no SOAP.

    Args:
        b1: :math:`\beta_1 \in [0, 1)` of the first moment.
        b2: :math:`\beta_2 \in [0, 1)` of the second moment (in the eigenbasis).
        shampoo_beta: :math:`\beta_s \in [0, 1)` of the statistics; ``None``: ``b2``.
        eps: :math:`\epsilon \ge 0`.
        precondition_frequency: :math:`f`, steps between the QR refreshes of the bases (> 0).
        max_precond_dim: the largest axis given a basis (> 0).
        merge_dims: merge small consecutive axes first (the authors' ``merge_dims``).
        precondition_1d: give vectors a basis too.
        normalize_grads: divide the direction by its RMS per layer.
        correct_bias: Adam's bias corrections :math:`s_t`.
        layer_axes: the leading axes of each leaf that index stacked layers: each layer gets
            its own statistics and bases (see :func:`~optimizers.layer_axes_from_flax`).
        mu_dtype, nu_dtype: the dtypes of :math:`m` and :math:`v` (``None``: the params').
        precond_dtype: the dtype the statistics and bases are kept in (``None``: the params',
            as the authors' code); the eigendecomposition and QR run in at least float32.

    References:
        Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321,
        2024, Algorithm 3, and the authors' ``soap.py``.
    """
    owner = "scale_by_soap"
    _check_soap(owner, b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim)
    for name, dt in (("mu_dtype", mu_dtype), ("nu_dtype", nu_dtype), ("precond_dtype", precond_dtype)):
        check_state_dtype(owner, name, dt)
    check_layer_axes(owner, layer_axes)
    values = given(b1=b1, b2=b2, shampoo_beta=shampoo_beta, eps=eps)
    max_dim = static_int(max_precond_dim)
    if max_dim is None and merge_dims:
        raise ValueError(f"{owner}: a traced max_precond_dim with merge_dims=True: give it to "
                         f"optax.inject_hyperparams in static_args")

    def plans_of(tree, state=None):
        if max_dim is None:
            return _plans_from_state(owner, tree, layer_axes, state.stats)
        return _plans(owner, tree, layer_axes, max_dim, merge_dims, precondition_1d)

    def pdtype(p):
        return p.dtype if precond_dtype is None else jax.dtypes.canonicalize_dtype(precond_dtype)

    def init_fn(params):
        if max_dim is None:
            raise jax.errors.ConcretizationTypeError(
                max_precond_dim, f"{owner}: max_precond_dim decides which axes get a basis (the state's shapes), "
                "so init cannot take it traced: under optax.inject_hyperparams, name it in static_args, or call "
                "init outside jax.jit")
        reject_complex(owner, params, "SOAP's bases are real, as in the authors' code")
        plans = plans_of(params)
        leaves, treedef = jax.tree.flatten(params)
        stats, bases = [], []
        for p, plan in zip(leaves, plans):
            lead = p.shape[:plan.k]
            dims = [d for d, on in zip(plan.merged, plan.on) if on]
            stats.append(tuple(jnp.zeros(lead + (d, d), pdtype(p)) for d in dims))
            bases.append(tuple(jnp.broadcast_to(jnp.eye(d, dtype=pdtype(p)), lead + (d, d)) for d in dims))
        n = n_axes(plans)
        return ScaleBySoapState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
                                zeros_in(params, nu_dtype), per_axis(stats, treedef, plans, n),
                                per_axis(bases, treedef, plans, n),
                                treedef.unflatten([jnp.ones(flag_shape(p, plan), bool) for p, plan in zip(leaves, plans)]))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        beta1, beta2, e = hp["b1"], hp["b2"], hp["eps"]
        bs = hp.get("shampoo_beta", beta2)
        c = state.count
        t = jnp.maximum(c, 1).astype(beta1.dtype)
        scale = jnp.sqrt(1 - beta2**t) / (1 - beta1**t) if correct_bias else jnp.ones([], beta1.dtype)
        plans = plans_of(updates, state)
        leaves, treedef = jax.tree.flatten(updates)
        mus, nus = jax.tree.leaves(state.mu), jax.tree.leaves(state.nu)
        stats_in = per_leaf(state.stats, treedef, plans)
        bases_in = per_leaf(state.bases, treedef, plans)
        first = c == 0
        out, new_mu, new_nu, new_stats = [], [], [], []
        for g, m, v, ss, qs, plan in zip(leaves, mus, nus, stats_in, bases_in, plans):

            def direction(g, m, v, qs, plan=plan):
                full = _full(qs, plan)
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * project(g, full) ** 2
                n = project(project(m, full) / (jnp.sqrt(v) + e), full, transpose=True)
                if normalize_grads:
                    n = n / (1e-30 + jnp.sqrt(jnp.mean(n**2)))
                return n * scale, m, v

            def statistics(g, ss, plan=plan):
                axes = [a for a, on in enumerate(plan.on) if on]
                return tuple(store(widen(s) + (1 - bs) * (mode_statistic(g, a) - widen(s)), s.dtype)
                             for s, a in zip(ss, axes))

            gl = _layers(widen(g), plan)
            n, m2, v2 = over_layers(direction, plan.k)(gl, _layers(widen(m), plan), _layers(widen(v), plan), qs)
            ss2 = over_layers(statistics, plan.k)(gl, ss)
            out.append(jnp.where(first, 0, n).reshape(g.shape))
            new_mu.append(store(jnp.where(first, widen(m), m2.reshape(g.shape)), m.dtype))
            new_nu.append(jnp.where(first, widen(v), v2.reshape(g.shape)))
            new_stats.append(ss2)

        refresh = jnp.where(first, 1, jnp.where(c % precondition_frequency == 0, 2, 0))

        def keep(ops):
            _, qs, vs = ops
            return qs, vs

        def by_eigh(ops):
            ss, _, vs = ops
            return [tuple(store(eigenbasis(widen(s)), s.dtype) for s in s_leaf) for s_leaf in ss], vs

        def by_qr(ops):
            ss, qs, vs = ops
            new_q, new_v = [], []
            for s_leaf, q_leaf, v, plan in zip(ss, qs, vs, plans):
                q2, v2 = over_layers(lambda s, q, v, plan=plan: _qr_refresh(s, q, v, plan), plan.k)(
                    tuple(map(widen, s_leaf)), tuple(map(widen, q_leaf)), _layers(v, plan))
                new_q.append(tuple(store(q, s.dtype) for q, s in zip(q2, s_leaf)))
                new_v.append(v2.reshape(v.shape))
            return new_q, new_v

        new_bases, new_nu = lax.switch(refresh, (keep, by_eigh, by_qr), (new_stats, list(bases_in), new_nu))
        new_bases = [tuple(q) for q in new_bases]
        new_stats = [tuple(s) for s in new_stats]
        new_nu = [store(v, old.dtype) for v, old in zip(new_nu, nus)]
        finite = [_finite_layers(ss + qs, g, plan) for ss, qs, g, plan in zip(new_stats, new_bases, leaves, plans)]
        out = [jnp.where(per_layer(f, u), u, jnp.nan).astype(g.dtype) for u, f, g in zip(out, finite, leaves)]
        new_state = ScaleBySoapState(optax.safe_increment(c), hp, treedef.unflatten(new_mu),
                                     treedef.unflatten(new_nu), per_axis(new_stats, treedef, plans, n_axes(plans)),
                                     per_axis(new_bases, treedef, plans, n_axes(plans)), treedef.unflatten(finite))
        return treedef.unflatten(out), new_state

    return transformation(owner, init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# The optimizer's last link: the learning rate, then the authors' decay of the stepped params


@declare_state(elementwise=True)
class SoapState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": ..., "weight_decay": ...}


def _step_then_decay(owner: str, learning_rate, weight_decay, mask) -> optax.GradientTransformation:
    r""":math:`u = -\eta d - \eta\lambda(\theta + (-\eta d))`: the step, then :math:`\theta \leftarrow
    \theta(1-\eta\lambda)` of the stepped params (the authors' order); zero at the first call."""
    values = dict(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        del params
        return SoapState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, lam = hp["learning_rate"], hp["weight_decay"]
        live = state.count > 0

        def one(u, p, on):
            step = -lr * widen(u)
            if on:
                step = step - lr * lam * (widen(p) + step)
            return jnp.where(live, step, 0).astype(u.dtype)

        masks = leaf_masks(mask, params) if mask is not None else jax.tree.map(lambda _: True, params)
        out = jax.tree.map(one, updates, params, masks)
        return out, SoapState(optax.safe_increment(state.count), hp)

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Vyas et al. 2024",
                   update=("Adam in the eigenbasis `Q` of `L=β_sL+(1-β_s)GGᵀ` per axis (QR refresh every `f` "
                           "steps): `θ=(θ-γ√(1-β₂ᵗ)/(1-β₁ᵗ)·Q(Qᵀm/(√v+ε)))(1-γλ)`"),
                   test_kwargs=dict(learning_rate=0.02, weight_decay=0.0, precondition_frequency=2))
def soap(learning_rate: ScalarOrSchedule = 3e-3, b1: ScalarOrSchedule = 0.95, b2: ScalarOrSchedule = 0.95,
         shampoo_beta: Optional[ScalarOrSchedule] = None, eps: ScalarOrSchedule = 1e-8,
         weight_decay: ScalarOrSchedule = 0.01, precondition_frequency: int = 10, max_precond_dim: int = 10000,
         merge_dims: bool = False, precondition_1d: bool = False, normalize_grads: bool = False,
         correct_bias: bool = True, mask: MaskOrFn = None, *, layer_axes: LayerAxes = None, mu_dtype=None,
         nu_dtype=None, precond_dtype=None) -> optax.GradientTransformation:
    r"""SOAP (the authors' defaults): :func:`scale_by_soap`, then the step and the decoupled decay.

    .. math::
        \theta_t = (\theta_{t-1} - \eta_t d_t)(1 - \eta_t \lambda_t)

    (the authors decay the parameters after the step: the decay term is
    :math:`\eta\lambda(\theta_{t-1} - \eta d_t)`, not AdamW's :math:`\eta\lambda\theta_{t-1}`).
    The first call changes nothing (the authors' first step only builds the bases).

    .. warning::
        ``pytorch_optimizer.SOAP`` decays the same way; its ``normalize_gradient`` and
        ``merge_dims`` differ (see :func:`scale_by_soap`).

    Args:
        learning_rate: :math:`\eta \ge 0`, a number or a schedule.
        weight_decay: :math:`\lambda \ge 0`.
        mask: which leaves are decayed (a tree of booleans, a prefix, or a function of the params).
        b1, b2, shampoo_beta, eps: as in :func:`scale_by_soap`.
        precondition_frequency, max_precond_dim, merge_dims: as in :func:`scale_by_soap`.
        precondition_1d, normalize_grads, correct_bias: as in :func:`scale_by_soap`.
        layer_axes, mu_dtype, nu_dtype, precond_dtype: as in :func:`scale_by_soap`.

    References:
        Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321, 2024.
    """
    owner = "soap"
    check_learning_rate(owner, learning_rate)
    check_range(owner, "weight_decay", weight_decay, 0.0)
    return optax.chain(
        scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, merge_dims,
                      precondition_1d, normalize_grads, correct_bias, layer_axes=layer_axes, mu_dtype=mu_dtype,
                      nu_dtype=nu_dtype, precond_dtype=precond_dtype),
        _step_then_decay(owner, learning_rate, weight_decay, mask),
    )

