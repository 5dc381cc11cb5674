"""NorMuon: Muon with NorMuon's per-neuron normalization of the orthogonalized update (the alias;
the transform is :func:`~optimizers.rules.matrix.muon.scale_by_muon` with ``normalization="neuron"``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import optax

from optimizers.contract.layers import LayerAxes
from optimizers.contract.registry import declare_optimizer
from optimizers.rules.matrix.muon import _muon
from optimizers.rules.matrix.newton_schulz import _JORDAN, NsCoeffs, WeightDimNumOrFn
from optimizers.rules.scaling import MaskOrFn
from schedules import ScalarOrSchedule


@declare_optimizer(paper="Li et al. 2025",
                   update=('matrices (per layer with `layer_axes`): `O=NS₅((1-μ)g+μB)`; `v=β₂v+(1-β₂)mean_in(O²)` per '
                           'output neuron; `Ô=O/(√v+ε)·‖O‖/‖O/(√v+ε)‖`; `θ=θ(1-γλ)-γs·Ô`; AdamW for the other leaves'),
                   test_kwargs=dict(learning_rate=0.02, adam_learning_rate=0.01))
def normuon(learning_rate: ScalarOrSchedule, ns_coeffs: NsCoeffs = _JORDAN, ns_steps: int = 5,
            beta: ScalarOrSchedule = 0.95, eps: Optional[ScalarOrSchedule] = None, weight_decay: ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None, mu_dtype=None, *, beta2: ScalarOrSchedule = 0.95,
            nesterov: bool = True, adaptive: bool = False, preconditioning: str = "frobenius",
            adam_b1: ScalarOrSchedule = 0.9, adam_b2: ScalarOrSchedule = 0.999, adam_eps_root: ScalarOrSchedule = 0.0,
            adam_weight_decay: ScalarOrSchedule = 0.0, adam_learning_rate: Optional[ScalarOrSchedule] = None,
            muon_weight_dimension_numbers: WeightDimNumOrFn = None, consistent_rms: Optional[float] = None,
            layer_axes: LayerAxes = None, ns_dtype=jnp.float32, form: str = "reference",
            adjust_lr: Optional[str] = None, muon_mask: MaskOrFn = None, adam_eps: ScalarOrSchedule = 1e-8,
            adam_nesterov: Optional[bool] = None, nu_dtype=None,
         distributed: Optional[tuple] = None) -> optax.GradientTransformation:
    r"""NorMuon: Muon whose orthogonalized update is normalized per output neuron; AdamW for the other leaves.

    Exactly the authors' reference code (``normuon_update`` and the step of
    github.com/zichongli5/NorMuon), per matrix (per layer with ``layer_axes``):

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t, \qquad O_t = \mathrm{NS}_5\big((1-\mu) G_t + \mu B_t\big), \\
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\mathrm{mean}_{d_{in}}(O_t \odot O_t) \in \mathbb{R}^{d_{out}},
        \qquad \hat O_t = O_t\,\mathrm{diag}\big(1/(\sqrt{v_t} + 10^{-10})\big), \\
        W_t = W_{t-1}(1 - \gamma\lambda) - \gamma\, s\,
        \frac{\lVert O_t\rVert_F}{\lVert \hat O_t\rVert_F + 10^{-10}}\,\hat O_t

    with :math:`v_0 = 0`, no bias correction, and :func:`muon`'s shape scale :math:`s`. **Which
    normalization:** the second moment of each output neuron (a column of the kernel
    :math:`(d_{in}, d_{out})`, a row of a PyTorch ``(out, in)`` weight: the code's
    ``mean(dim=-1)`` and its ``(out, 1)`` state), per layer of a stack; it is the state's ``nu``
    (declared nonnegative). **Which scale and why:** the code's: :math:`\hat O_t` is brought back
    to the Frobenius norm of :math:`O_t` and then multiplied by Muon's
    :math:`s = \sqrt{\max(1, d_{out}/d_{in})}` (the code's ``max(1, rows/cols)**0.5``). The paper's
    Algorithm 1 writes the learning rate :math:`0.2\gamma\sqrt{mn}/\lVert \hat O_t\rVert_F`
    instead (update RMS 0.2); since :math:`\lVert O_t\rVert_F \approx \sqrt{\min(m, n)}`,
    ``consistent_rms=0.2`` (:math:`s = 0.2\sqrt{\max(m, n)}`) gives that RMS up to how orthogonal
    :math:`O_t` is. The code is the default because the standard here is the authors'
    implementation where it and the paper's pseudo-code differ.

    Every keyword is :func:`muon`'s (forms, masks, layer axes, AdamW's branch) with the same
    meaning, plus ``beta2``; ``form="optax"`` is optax's Muon momentum, then the normalization.

    .. warning::
        optax and torch have no NorMuon. The authors' code iterates in bfloat16 (here float32
        unless ``ns_dtype``) and, like Jordan's Muon, reads the shape of an ``(out, in)`` weight.

    Args:
        beta2: :math:`\beta_2 \in [0, 1)` of the per-neuron second moment (the code's 0.95), or a schedule.
        others: see :func:`muon` (``adaptive=True`` is refused: a second rescaling of :math:`O_t`).

    References:
        Li et al., "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491, 2025
        (github.com/zichongli5/NorMuon); Jordan et al. 2024 (Muon).
    """
    return _muon("normuon", "neuron", **locals())
