"""NorMuon's normalization (Li et al. 2025, "NorMuon: Making Muon more efficient and scalable"): a
second moment per output neuron of the orthogonalized matrix, as the authors' ``normuon_update``."""

from __future__ import annotations

import jax.numpy as jnp

from optimizers.contract.dtypes import moment_dtype
from optimizers.rules.matrix.leaves import _fans


_NORMALIZATIONS = (None, "neuron")
_NORMUON_EPS = 1e-10  # the NorMuon reference code's, in 1/(sqrt(v)+eps) and in the norm ratio


def _check_normalization(owner, normalization, adaptive):
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"{owner}: normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    if normalization is not None and adaptive:
        raise ValueError(f"{owner}: normalization={normalization!r} and adaptive=True are exclusive (two different "
                         f"rescalings of the orthogonalized matrix)")


def _neuron_normalize(o, v_old, b2):
    r"""NorMuon's step on orthogonalized matrices ``o`` (batch + (d_in, d_out)): the per-output-neuron
    second moment :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\mathrm{mean}_{d_{in}}(O_t^2)`, then
    :math:`\hat O = O/(\sqrt{v_t}+\epsilon)` rescaled to :math:`O`'s Frobenius norm (per matrix)."""
    v = b2 * v_old + (1 - b2) * jnp.mean(o * o, axis=-2, keepdims=True)
    n = o / (jnp.sqrt(v) + _NORMUON_EPS)
    before = jnp.sqrt(jnp.sum(o * o, axis=(-2, -1), keepdims=True))
    after = jnp.sqrt(jnp.sum(n * n, axis=(-2, -1), keepdims=True))
    return n * (before / (after + _NORMUON_EPS)), v


def _neuron_zeros(p, spec, dtype):
    """NorMuon's zero second moment of one leaf: its matrices' shape with ``d_in`` collapsed to 1."""
    batch = tuple(p.shape[a] for a in spec.batch)
    return jnp.zeros(batch + (1, _fans(p.shape, spec)[1]), moment_dtype(p.dtype, dtype))
