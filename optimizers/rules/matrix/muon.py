r"""Muon: momentum orthogonalized by Newton–Schulz, for the matrix-shaped leaves; AdamW for the others.

For each weight matrix :math:`W \in \mathbb{R}^{m \times n}` (after its layer axes, see
``layer_axes``) with gradient :math:`G_t`, the reference form (Keller Jordan's ``muon.py`` and
``torch.optim.Muon``) is

.. math::
    B_t = \mu B_{t-1} + (1-\mu) G_t, \qquad
    \tilde B_t = (1-\mu) G_t + \mu B_t \ \text{(Nesterov)} \ \text{or} \ B_t, \\
    O_t = \mathrm{NS}_k(\tilde B_t), \qquad
    W_t = W_{t-1}(1 - \gamma\lambda) - \gamma\, s(m, n)\, O_t

with :math:`s = \sqrt{\max(1, n/m)}` for a kernel of shape :math:`(m, n) = (d_{in}, d_{out})`
(Jordan's ``max(1, A/B)`` of a PyTorch ``(out, in)`` weight) or Moonlight's
:math:`s = 0.2\sqrt{\max(m, n)}` (``adjust_lr="match_rms_adamw"``, ``consistent_rms=0.2``).
:math:`\mathrm{NS}_k` is :func:`orthogonalize`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from optimizers.contract.checks import is_float, transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store, widen, zeros_in
from optimizers.contract.hyperparams import (check_range, current_hyperparams, given, init_hyperparams,
                                             with_prefixed_hyperparams)
from optimizers.contract.layers import LayerAxes, check_layer_axes
from optimizers.contract.moments import ema
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import scale_by_adam
from optimizers.rules.matrix.distributed import check_distributed, orthogonalize_all
from optimizers.rules.matrix.leaves import _Spec, _spec_tree, _specs, _to_matrices, scale_by_shape
from optimizers.rules.matrix.neurons import _check_normalization, _neuron_normalize, _neuron_zeros
from optimizers.rules.matrix.newton_schulz import (_FORMS, _JORDAN, NsCoeffs, WeightDimNumOrFn, _check_preconditioning,
                                                   _check_steps, _coefficients, _iteration_coefficients, _orthogonalize)
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


# ---------------------------------------------------------------------------------------------
# The transforms


@declare_state(nonnegative=("nu",), elementwise=False)
class ScaleByMuonState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"beta": ..., "eps": ...} (and "beta2" with normalization="neuron")
    mu: optax.Updates  # B_t, the momentum of the Muon leaves (optax.MaskedNode at the others)
    nu: optax.Updates = None  # NorMuon's v_t, per layer and output neuron: batch + (1, d_out); else MaskedNode


def _check_form(owner, form):
    if form not in _FORMS:
        raise ValueError(f"{owner}: form must be one of {_FORMS}, got {form!r}")


def _default_eps(eps, form):
    return (1e-7 if form == "reference" else 1e-8) if eps is None else eps


def scale_by_muon(ns_coeffs: NsCoeffs = _JORDAN, ns_steps: int = 5, beta: ScalarOrSchedule = 0.95,
                  eps: Optional[ScalarOrSchedule] = None, mu_dtype=None, *, nesterov: bool = True,
                  adaptive: bool = False, preconditioning: str = "frobenius",
                  weight_dimension_numbers: WeightDimNumOrFn = None, layer_axes: LayerAxes = None,
                  ns_dtype=jnp.float32, form: str = "reference", normalization: Optional[str] = None,
                  beta2: ScalarOrSchedule = 0.95, distributed: Optional[tuple] = None) -> optax.GradientTransformation:
    r"""Muon's direction: the momentum of each matrix, orthogonalized (no shape scale, no learning rate).

    ``form="reference"`` (Jordan's ``muon.py``, ``torch.optim.Muon``): no bias correction,

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t, \qquad
        u_t = \mathrm{NS}_k\big((1-\mu) G_t + \mu B_t\big) \ \text{(Nesterov)}, \quad
        u_t = \mathrm{NS}_k(B_t) \ \text{(heavy ball)}.

    ``form="optax"`` (``optax.contrib.scale_by_muon``, step for step): the same :math:`B_t`,
    bias-corrected: :math:`\hat B_t = B_t/(1-\mu^t)`, Nesterov
    :math:`\mu B_t/(1-\mu^{t+1}) + (1-\mu) G_t/(1-\mu^t)`; a sequence of ``ns_coeffs`` triples
    is used once each (at most ``ns_steps`` of them), and ``adaptive`` sums over the whole leaf.

    Which leaves: every leaf whose axes besides its ``layer_axes`` are exactly two (each layer
    its own matrix :math:`(d_{in}, d_{out})`), or that ``weight_dimension_numbers`` describes
    (optax's ``MuonDimensionNumbers``: its other axes are batch axes, each slice its own
    matrix). Other leaves pass through unchanged and keep no momentum (``optax.MaskedNode`` in
    ``mu``); :func:`muon` sends them to AdamW. Layer axes named as matrix axes by the dimension
    numbers, or an axis out of range, raise ``ValueError`` naming the leaf. Complex matrices
    raise ``TypeError`` at ``init`` (as ``torch.optim.Muon``; optax iterates with :math:`XX^H`).

    ``normalization="neuron"`` is NorMuon (Li et al. 2025), exactly as its authors' reference code
    (``normuon_update`` of github.com/zichongli5/NorMuon): after the orthogonalization, a second
    moment per output neuron (per layer) and a rescale back to the orthogonalized matrix's norm,

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\tfrac{1}{d_{in}} \textstyle\sum_i (O_t)_{ij}^2
        \ \ (v \in \mathbb{R}^{d_{out}},\ v_0 = 0,\ \text{no bias correction}), \\
        \hat O_t = O_t \,\mathrm{diag}\big(1/(\sqrt{v_t} + 10^{-10})\big), \qquad
        u_t = \hat O_t \, \lVert O_t\rVert_F / (\lVert \hat O_t \rVert_F + 10^{-10}).

    A neuron is a column of the kernel :math:`(d_{in}, d_{out})` (a row of a PyTorch ``(out, in)``
    weight: the code's ``mean(dim=-1)``). Why the norm-restoring rescale and not the paper's
    Algorithm 1 scale :math:`0.2\sqrt{mn}/\lVert\hat O_t\rVert_F`: the code is the published
    method we follow; it keeps :math:`\lVert u_t\rVert_F = \lVert O_t \rVert_F \approx
    \sqrt{\min(m, n)}`, and :func:`muon`'s shape scale then finishes it — the default
    :math:`\sqrt{\max(1, d_{out}/d_{in})}` is the code's, and ``consistent_rms=0.2`` gives update
    RMS :math:`0.2` per matrix, Algorithm 1's scale up to how orthogonal :math:`O_t` is.
    The :math:`v_t` is the state's ``nu`` (``optax.MaskedNode`` without ``normalization``).

    .. warning::
        ``optax.contrib.scale_by_muon`` raises for a leaf that is not a matrix; here it passes
        through unchanged. Its momentum is the optax form's. optax has no NorMuon.

    Args:
        ns_coeffs, ns_steps, preconditioning: as in :func:`orthogonalize` (a preset name too).
        beta: the momentum :math:`\mu \in [0, 1)`, or a schedule.
        eps: :math:`\epsilon` of the normalization; ``None``: the form's (1e-7 reference, 1e-8 optax).
        mu_dtype: the dtype of :math:`B` (``None``: the params'); computed in at least float32.
        nesterov: the Nesterov form of the orthogonalized matrix.
        adaptive: scale :math:`O_t` by :math:`\langle \tilde B_t, O_t \rangle` (Bernstein & Newhouse
            2024; the dual norm), per matrix (reference form) or per leaf (optax form).
        weight_dimension_numbers: optax's: a ``MuonDimensionNumbers``, a prefix tree of them
            (``None`` entries: not Muon leaves) or a function ``params -> such a tree``.
        layer_axes: the leading axes of each leaf that index stacked layers (see
            :func:`~optimizers.layer_axes_from_flax`); each layer's matrix is orthogonalized on
            its own, and a stack sharded on its layer axes needs no communication.
        ns_dtype: the dtype of the Newton–Schulz iteration (float32; ``jnp.bfloat16`` as Jordan's code).
        form: ``"reference"`` or ``"optax"``.
        normalization: ``None`` (Muon) or ``"neuron"`` (NorMuon; not with ``adaptive``).
        beta2: NorMuon's :math:`\beta_2 \in [0, 1)` (the reference code's 0.95), or a schedule;
            used only with ``normalization="neuron"``.
        distributed: ``None``, or ``(mesh, axis)`` (a ``jax.sharding.Mesh`` and one of its axis
            names, or a tuple of them): Distributed Muon (Liu et al. 2025) under ``jax.jit`` on that
            mesh: the matrices are grouped by shape, each group stacked and its leading axis split
            over the axis, so each device orthogonalizes about :math:`1/N` of them (a lone matrix is
            split along its long side); the values are the one-device ones (see
            ``optimizers/rules/matrix/distributed.py`` and the guide).

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024;
        Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv:2409.20325 (``adaptive``);
        Li et al., "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491, 2025.
    """
    return _scale_by_muon("scale_by_muon", **locals())


def _scale_by_muon(owner, ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, adaptive, preconditioning,
                   weight_dimension_numbers, layer_axes, ns_dtype, form, normalization, beta2, distributed):
    """:func:`scale_by_muon`, its errors named by ``owner`` (``muon``'s and ``normuon``'s own at ``init``)."""
    _check_form(owner, form)
    _check_normalization(owner, normalization, adaptive)
    check_range(owner, "beta2", beta2, 0.0, 1.0, high_open=True)
    distributed = check_distributed(owner, distributed)
    triples, per_iteration, factor = _coefficients(owner, ns_coeffs)
    _check_steps(owner, ns_steps)
    _check_preconditioning(owner, preconditioning)
    check_range(owner, "beta", beta, 0.0, 1.0, high_open=True)
    eps = _default_eps(eps, form)
    check_range(owner, "eps", eps, 0.0)
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "ns_dtype", ns_dtype)
    check_layer_axes(owner, layer_axes)
    schedule = _iteration_coefficients(owner, triples, per_iteration, ns_steps, form)
    values = given(beta=beta, eps=eps, **({"beta2": beta2} if normalization else {}))

    def init_fn(params):
        specs = _specs(owner, params, layer_axes, weight_dimension_numbers)
        leaves, treedef = jax.tree.flatten(params)
        reject_complex(owner, [p for p, spec in zip(leaves, specs) if spec is not None],
                       "Muon's matrices are real, as in torch.optim.Muon (complex vectors and scalars go to AdamW)")
        mu = [zeros_in(p, mu_dtype) if s is not None else optax.MaskedNode() for p, s in zip(leaves, specs)]
        nu = [_neuron_zeros(p, s, mu_dtype) if s is not None and normalization else optax.MaskedNode()
              for p, s in zip(leaves, specs)]
        return ScaleByMuonState(jnp.zeros([], jnp.int32), init_hyperparams(**values), treedef.unflatten(mu),
                                treedef.unflatten(nu))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        b = hp["beta"]
        leaves, treedef = jax.tree.flatten(updates)
        specs = _specs(owner, updates, layer_axes, weight_dimension_numbers)
        it = iter(jax.tree.leaves(state.mu))
        nus = dict(zip([i for i, s in enumerate(specs) if s is not None], jax.tree.leaves(state.nu))) \
            if normalization else {}
        out = list(leaves)  # the other leaves pass through
        new_mu = [optax.MaskedNode()] * len(leaves)
        new_nu = [optax.MaskedNode()] * len(leaves)
        todo = []  # the Muon leaves: orthogonalized together (spread over a mesh axis with ``distributed``)
        t = optax.safe_increment(state.count).astype(b.dtype)

        def ortho(x):
            return _orthogonalize(x, schedule, factor, hp["eps"], ns_dtype, preconditioning)

        for i, (g, spec) in enumerate(zip(leaves, specs)):
            if spec is None:
                continue
            old = next(it)
            m = ema(g, old, b)
            gw = widen(g)
            if form == "optax":
                if nesterov:
                    d = b * m / (1 - b ** (t + 1)) + (1 - b) * gw / (1 - b**t)
                else:
                    d = m / (1 - b**t)
            else:
                d = (1 - b) * gw + b * m if nesterov else m
            mats, back = _to_matrices(d, spec)
            todo.append((i, g, old, m, mats, back))
        orthogonal = orthogonalize_all([x[4] for x in todo], ortho, distributed)
        for (i, g, old, m, mats, back), o in zip(todo, orthogonal):
            if adaptive:
                if form == "optax":
                    o = jnp.sum(mats.conj() * o) * o
                else:
                    o = jnp.sum(mats.conj() * o, axis=(-2, -1), keepdims=True) * o
            if normalization:
                v_old = nus[i]
                o, v = _neuron_normalize(o.astype(widen(v_old).dtype), widen(v_old), hp["beta2"])
                new_nu[i] = store(v, v_old.dtype)
            out[i] = store(back(o), g.dtype)
            new_mu[i] = store(m, old.dtype)
        return treedef.unflatten(out), ScaleByMuonState(optax.safe_increment(state.count), hp,
                                                       treedef.unflatten(new_mu), treedef.unflatten(new_nu))

    return transformation(owner, init_fn, update_fn)


_ADJUST = {"original": None, "match_rms_adamw": 0.2}


@declare_optimizer(paper='Jordan et al. 2024; Liu et al. 2025',
                   update=('matrices (per layer with `layer_axes`): '
                           '`B=μB+(1-μ)g; θ=θ(1-γλ)-γs·NS₅((1-μ)g+μB)`; AdamW for the other leaves'),
                   test_kwargs=dict(learning_rate=0.02, adam_learning_rate=0.01))
def muon(learning_rate: ScalarOrSchedule, ns_coeffs: NsCoeffs = _JORDAN, ns_steps: int = 5,
         beta: ScalarOrSchedule = 0.95, eps: Optional[ScalarOrSchedule] = None, weight_decay: ScalarOrSchedule = 0.0,
         weight_decay_mask: MaskOrFn = None, mu_dtype=None, *, nesterov: bool = True, adaptive: bool = False,
         preconditioning: str = "frobenius", adam_b1: ScalarOrSchedule = 0.9, adam_b2: ScalarOrSchedule = 0.999,
         adam_eps_root: ScalarOrSchedule = 0.0, adam_weight_decay: ScalarOrSchedule = 0.0,
         adam_learning_rate: Optional[ScalarOrSchedule] = None,
         muon_weight_dimension_numbers: WeightDimNumOrFn = None, consistent_rms: Optional[float] = None,
         layer_axes: LayerAxes = None, ns_dtype=jnp.float32, form: str = "reference",
         adjust_lr: Optional[str] = None, muon_mask: MaskOrFn = None, adam_eps: ScalarOrSchedule = 1e-8,
         adam_nesterov: Optional[bool] = None, nu_dtype=None,
         distributed: Optional[tuple] = None) -> optax.GradientTransformation:
    r"""Muon for the matrices, AdamW for every other leaf.

    Each Muon leaf (see below): :math:`\theta_t = \theta_{t-1} - \gamma_t (s\,u_t + \lambda\theta_{t-1})`
    with :func:`scale_by_muon`'s :math:`u_t`, so :math:`\theta_t = \theta_{t-1}(1-\gamma\lambda) - \gamma s u_t`
    (decoupled decay, as ``torch.optim.Muon``), and :math:`s = \sqrt{\max(1, d_{out}/d_{in})}`
    (Jordan; ``adjust_lr="original"``) or :math:`s = c\sqrt{\max(d_{in}, d_{out})}` with
    ``consistent_rms=c`` (Liu et al.'s 0.2: ``adjust_lr="match_rms_adamw"``). Every other leaf:
    :func:`~optimizers.adamw` with ``adam_learning_rate`` (default ``learning_rate``),
    ``adam_b1``, ``adam_b2``, ``adam_eps``, ``adam_eps_root`` and ``adam_weight_decay``.

    **Which leaves.** A leaf whose axes besides its ``layer_axes`` are exactly two: hidden
    kernels :math:`(d_{in}, d_{out})`, and with ``layer_axes`` stacked (scanned) kernels
    :math:`(L, d_{in}, d_{out})`, each layer on its own. Without ``layer_axes`` a 3-D leaf goes
    to AdamW (as in optax; give ``layer_axes`` or dimension numbers). Embeddings and the output
    head are 2-D but, in Jordan's and Moonlight's recipes, belong on AdamW: leave them out with
    ``muon_mask`` (booleans, a prefix tree or a function of the params: ``False`` is AdamW;
    ``True`` is Muon for a matrix, AdamW for a vector or scalar, and ``ValueError`` for a leaf
    with more than two axes besides its layer axes) or with optax's ``muon_weight_dimension_numbers`` (``None``
    entries are AdamW, and the tree then decides every leaf). A leaf that ``layer_axes``,
    the dimension numbers and the mask describe inconsistently raises ``ValueError`` naming
    its path.

    **Forms.** ``form="reference"`` (default): Jordan's ``muon.py`` and ``torch.optim.Muon``:
    no bias correction, ``eps=1e-7``, AdamW without Nesterov, with ``adam_eps``.
    ``form="optax"``: ``optax.contrib.muon`` step for step: bias-corrected momentum,
    ``eps=1e-8``, AdamW with optax's ``nesterov`` (Nadam's :math:`\hat m`) and, where ``eps``
    is given, ``eps`` as its :math:`\epsilon` (optax's coupling; else ``adam_eps``, whose
    default is optax's ``eps``). ``adam_nesterov`` overrides either form's. ``torch.optim.Muon(lr,
    weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn)`` is
    ``muon(lr, ns_coefficients, ns_steps, momentum, eps, weight_decay, nesterov=nesterov,
    adjust_lr=adjust_lr_fn)`` on the transposed (``(in, out)``) weights.

    .. warning::
        ``optax.contrib.muon`` bias-corrects the momentum (so its early steps differ from the
        reference's), defaults to ``eps=1e-8`` and gives its AdamW branch Muon's ``eps`` and
        ``nesterov``: ``form="optax"`` is all of that. ``torch.optim.Muon`` iterates in bfloat16
        (here float32 unless ``ns_dtype``), divides by :math:`\max(\lVert G\rVert_F, \epsilon)`
        where the reference code adds :math:`\epsilon`, defaults to ``weight_decay=0.1`` (here
        optax's 0), reads its scale from an ``(out, in)`` weight (here an ``(in, out)`` kernel: the
        same scale for the same layer) and has no AdamW branch. Without ``layer_axes`` or
        dimension numbers a 3-D leaf goes to AdamW, as in optax (torch raises).

    ``fused=True`` is not offered: the step is bound by the Newton–Schulz matmuls, not by
    memory, so a one-pass CPU kernel would gain nothing (``ns_dtype=jnp.bfloat16`` is the
    speed option on accelerators). State: one momentum per Muon parameter (``mu_dtype``,
    :func:`~optimizers.with_quantized_state` for 1 byte), Adam's two for the others.

    Args:
        learning_rate: :math:`\gamma_t`, a number or a schedule.
        ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, adaptive, preconditioning: see
            :func:`scale_by_muon` (``mu_dtype`` also Adam's first moment, as in optax).
        weight_decay: :math:`\lambda` of the Muon leaves (multiplied by the learning rate).
        weight_decay_mask: which Muon leaves to decay (optax's meaning).
        adam_b1, adam_b2, adam_eps_root, adam_weight_decay, adam_learning_rate: AdamW's, for the
            other leaves (optax's names).
        muon_weight_dimension_numbers: optax's dimension numbers (see :func:`scale_by_muon`).
        consistent_rms: ``None`` (Jordan's :math:`s`) or :math:`c` in :math:`s = c\sqrt{\max(d_{in}, d_{out})}`.
        layer_axes: the stacked-layer axes of each leaf (see :func:`scale_by_muon`).
        ns_dtype: the dtype of the Newton–Schulz iteration.
        form: ``"reference"`` or ``"optax"``.
        adjust_lr: ``torch.optim.Muon``'s ``adjust_lr_fn``: ``"original"`` or ``"match_rms_adamw"``
            (``consistent_rms=0.2``); not together with ``consistent_rms``.
        muon_mask: which leaves get Muon (``None``: the shape rule).
        adam_eps: AdamW's :math:`\epsilon` (in the optax form ``eps`` where that is given).
        adam_nesterov: AdamW's Nesterov form; ``None``: off (reference) or ``nesterov`` (optax).
        nu_dtype: the dtype of AdamW's second moment (``None``: the params').
        distributed: ``(mesh, axis)``: Distributed Muon over that mesh axis (see :func:`scale_by_muon`).

    The state's hyperparameters: Muon's ``beta``, ``eps``, ``weight_decay`` and
    ``learning_rate``; AdamW's under the keywords' names (``adam_learning_rate``, ``adam_b1``,
    ``adam_b2``, ``adam_eps``, ``adam_eps_root``, ``adam_weight_decay``), for
    :func:`~optimizers.get_hyperparams` and :func:`~optimizers.set_hyperparams`.

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024
        (https://kellerjordan.github.io/posts/muon/, github.com/KellerJordan/Muon);
        Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982, 2025 (consistent RMS);
        Amsel et al. 2025 (``ns_coeffs="polar_express"``, see :func:`orthogonalize`).
    """
    return _muon("muon", None, 0.95, **locals())


def _muon(owner, normalization, beta2, learning_rate, ns_coeffs, ns_steps, beta, eps, weight_decay, weight_decay_mask,
          mu_dtype, nesterov, adaptive, preconditioning, adam_b1, adam_b2, adam_eps_root, adam_weight_decay,
          adam_learning_rate, muon_weight_dimension_numbers, consistent_rms, layer_axes, ns_dtype, form, adjust_lr,
          muon_mask, adam_eps, adam_nesterov, nu_dtype, distributed) -> optax.GradientTransformation:
    """:func:`muon` (``normalization=None``) or :func:`normuon` (``"neuron"``), errors named by ``owner``."""
    _check_form(owner, form)
    _check_normalization(owner, normalization, adaptive)
    if normalization:
        check_range(owner, "beta2", beta2, 0.0, 1.0, high_open=True)
    if adjust_lr is not None:
        if adjust_lr not in _ADJUST:
            raise ValueError(f"{owner}: adjust_lr must be one of {sorted(_ADJUST)} or None, got {adjust_lr!r}")
        if consistent_rms is not None:
            raise ValueError(f"{owner}: give adjust_lr or consistent_rms, not both: got adjust_lr={adjust_lr!r} and "
                             f"consistent_rms={consistent_rms!r}")
        consistent_rms = _ADJUST[adjust_lr]
    if consistent_rms is not None:
        check_range(owner, "consistent_rms", consistent_rms, 0.0, low_open=True)
    check_layer_axes(owner, layer_axes)
    check_range(owner, "adam_b1", adam_b1, 0.0, 1.0, high_open=True)
    check_range(owner, "adam_b2", adam_b2, 0.0, 1.0, high_open=True)
    check_range(owner, "adam_eps_root", adam_eps_root, 0.0)
    check_range(owner, "adam_weight_decay", adam_weight_decay, 0.0)
    if adam_learning_rate is not None:
        check_range(owner, "adam_learning_rate", adam_learning_rate, 0.0)
    check_range(owner, "adam_eps", adam_eps, 0.0, low_open=True)
    if form == "optax" and eps is not None:
        adam_eps = eps  # optax's AdamW takes Muon's eps
    eps = _default_eps(eps, form)
    if adam_nesterov is None:
        adam_nesterov = False if form == "reference" else nesterov
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    dims = muon_weight_dimension_numbers

    def labels(tree):
        specs = _specs(owner, tree, layer_axes, dims, muon_mask)
        kinds = ["muon" if s is not None and is_float(x) else "adam" for s, x in zip(specs, jax.tree.leaves(tree))]
        return jax.tree.unflatten(jax.tree.structure(tree), kinds)  # non-float leaves: AdamW passes them through

    # Inside the partition the Muon branch sees the params with optax.MaskedNode at the AdamW leaves;
    # its dimension numbers are the ones the labels were made from.
    def branch_dims(tree):
        return jax.tree.map(lambda s: None if s is None else MuonDimensionNumbers(s.reduction, s.output),
                            _spec_tree(owner, tree, layer_axes, dims), is_leaf=lambda s: s is None or
                            isinstance(s, _Spec))

    muon_branch = optax.chain(
        _scale_by_muon(owner, ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov, adaptive=adaptive,
                       preconditioning=preconditioning, weight_dimension_numbers=branch_dims, layer_axes=None,
                       ns_dtype=ns_dtype, form=form, normalization=normalization, beta2=beta2,
                       distributed=distributed),
        scale_by_shape(owner, None, branch_dims, consistent_rms),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    adam_branch = with_prefixed_hyperparams(optax.chain(  # AdamW (optimizers.adamw's chain)
        scale_by_adam(adam_b1, adam_b2, adam_eps, adam_eps_root, mu_dtype, nesterov=adam_nesterov, nu_dtype=nu_dtype),
        add_decayed_weights(adam_weight_decay),
        scale_by_learning_rate(adam_lr),
    ), "adam_")
    partitioned = optax.partition({"muon": muon_branch, "adam": adam_branch}, labels)
    return transformation(owner, partitioned.init, partitioned.update)  # checked trees, named paths
