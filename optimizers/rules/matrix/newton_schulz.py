"""Newton–Schulz orthogonalization for Muon: the coefficient presets and the iteration."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from optimizers.contract.dtypes import widen
from optimizers.contract.hyperparams import static_int


_FORMS = ("reference", "optax")
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_JORDAN = (3.4445, -4.7750, 2.0315)

# Polar Express, degree 5 (Amsel, Persson, Musco & Gower 2025, arXiv:2505.16932, Algorithm 1): the
# published per-iteration coefficients; all but the last divided by (1.01, 1.01³, 1.01⁵) (the
# paper's safety factor), the last repeated beyond the eighth iteration, and X₀ = G/(1.01‖G‖_F + ε).
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_POLAR_EXPRESS = tuple((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]) + (
    _POLAR_EXPRESS_RAW[-1],)

NS_PRESETS: dict[str, tuple[tuple, float]] = {
    # name: (coefficients (one triple or one per iteration), the factor on ‖X‖_F in the normalization)
    "standard": (_JORDAN, 1.0),  # Jordan 2024; torch.optim.Muon's and optax's default
    "dion": (((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
              (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)), 1.0),  # optax's "dion" preset
    "polar_express": (_POLAR_EXPRESS, 1.01),
}
"""Named Newton–Schulz coefficient presets for ``ns_coeffs``: ``(coefficients, norm factor)``."""

NsCoeffs = Union[str, Sequence[float], Sequence[Sequence[float]]]
"""A preset name of ``NS_PRESETS``, one ``(a, b, c)`` triple, or one triple per iteration."""
WeightDimNumOrFn = Union[MuonDimensionNumbers, Any, Callable[[optax.Params], Any], None]


# ---------------------------------------------------------------------------------------------
# Coefficients and the iteration


def _coefficients(owner: str, ns_coeffs) -> tuple[tuple[tuple[float, float, float], ...], bool, float]:
    """``(triples, per_iteration, norm_factor)`` from a triple, a sequence of triples or a preset name."""
    factor = 1.0
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_PRESETS:
            raise ValueError(f"{owner}: ns_coeffs must be one of the presets {sorted(NS_PRESETS)} or coefficients, "
                             f"got {ns_coeffs!r}")
        ns_coeffs, factor = NS_PRESETS[ns_coeffs]
    try:
        arr = np.asarray(ns_coeffs, dtype=np.float64)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.ndim not in (1, 2) or arr.shape[-1] != 3 or arr.size == 0:
        raise ValueError(f"{owner}: ns_coeffs must be one (a, b, c) triple or a sequence of (a, b, c) triples, "
                         f"got {ns_coeffs!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{owner}: ns_coeffs must be finite, got {ns_coeffs!r}")
    triples = tuple(tuple(float(c) for c in row) for row in arr.reshape(-1, 3))
    return triples, arr.ndim == 2, factor


def _check_steps(owner: str, ns_steps) -> None:
    steps = static_int(ns_steps)
    if isinstance(ns_steps, bool) or (steps is None and not isinstance(ns_steps, jax.Array)):
        raise ValueError(f"{owner}: ns_steps must be an int >= 1, got {ns_steps!r}")
    if steps is not None and (steps < 1 or steps != ns_steps):
        raise ValueError(f"{owner}: ns_steps must be an int >= 1, got {ns_steps!r}")


def _iteration_coefficients(owner: str, triples, per_iteration: bool, ns_steps, form: str):
    """The coefficients of each iteration (a tuple), or ``(table, steps)`` for a traced ``ns_steps``.

    A single triple serves every iteration. A sequence is taken as Polar Express's Algorithm 1
    takes it (the first ``ns_steps``, the last repeated beyond its length); in the optax form as
    ``optax.contrib.scale_by_muon`` takes it (at most ``ns_steps`` triples, each used once).
    """
    if per_iteration and form == "optax":
        steps = static_int(ns_steps)
        if steps is not None and len(triples) > steps:
            raise ValueError(f"{owner}: form='optax' takes at most ns_steps={steps} ns_coeffs triples, "
                             f"got {len(triples)}")
        return triples
    steps = static_int(ns_steps)
    if steps is None:
        return _Traced(triples, ns_steps)
    if per_iteration:
        return tuple(triples[min(i, len(triples) - 1)] for i in range(steps))
    return triples * steps


class _Traced:
    """The coefficients for a number of iterations known only when the step runs (a traced ``ns_steps``)."""

    def __init__(self, triples, steps):
        self.triples, self.steps = triples, steps


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _gram(x):
    return jnp.matmul(x, _mT(x).conj(), precision=jax.lax.Precision.HIGHEST)


def _mm(a, b):
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _ns_step(x, a_mat, coeffs):
    """:math:`X \\leftarrow aX + (bA + cA^2)X` with :math:`A = XX^H` given."""
    a, b, c = coeffs
    return a * x + _mm(b * a_mat + c * _mm(a_mat, a_mat), x)


def _first_step(x, coeffs, preconditioning: str):
    """The first iteration: optax's AOL and Schatten-4 rescalings of :math:`X` (and :math:`A`) first."""
    a_mat = _gram(x)
    if preconditioning == "aol":  # Boissin et al. 2025: rows rescaled by the inverse root of |A|'s row sums
        s = jax.lax.rsqrt(jnp.clip(jnp.sum(jnp.abs(a_mat), axis=-1), min=1e-8))[..., None]
        x, a_mat = x * s, a_mat * s * _mT(s)
    elif preconditioning == "schatten":  # Grishina et al. 2025: by the Schatten-4 norm, ‖XXᵀ‖_F^{1/2}
        a_mat = jnp.matmul(x, _mT(x), precision=jax.lax.Precision.HIGHEST)
        s = jax.lax.rsqrt(jnp.clip(jnp.sqrt(jnp.sum(jnp.abs(a_mat) ** 2, axis=(-2, -1), keepdims=True)), min=1e-8))
        x, a_mat = x * s, a_mat * s**2
    return _ns_step(x, a_mat, coeffs)


def _ns_dtype(dtype, x_dtype):
    """The iteration's dtype for a leaf: ``dtype``, or its complex form for a complex leaf."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(x_dtype, jnp.complexfloating):
        return jnp.promote_types(jnp.complex64, dtype)
    return dtype


def orthogonalize(x: jax.Array, ns_coeffs: NsCoeffs = _JORDAN, ns_steps: int = 5,
                  eps: float = 1e-7, *, ns_dtype=jnp.float32, preconditioning: str = "frobenius") -> jax.Array:
    r"""The Newton–Schulz approximation of the orthogonal polar factor :math:`UV^\top` of each matrix.

    For each matrix :math:`G` (the last two axes of ``x``; leading axes are a batch, each
    matrix on its own), as in Jordan's ``zeropower_via_newtonschulz5`` and
    ``torch.optim.Muon``:

    .. math::
        X_0 = \frac{G}{\|G\|_F + \epsilon}, \qquad
        A_i = X_i X_i^\top, \quad X_{i+1} = a_i X_i + (b_i A_i + c_i A_i^2) X_i, \quad i < k,

    computed on :math:`G^\top` (and transposed back) when :math:`G` has more rows than
    columns, so that :math:`A` is the smaller Gram matrix. Jordan's coefficients
    :math:`(3.4445, -4.7750, 2.0315)` for every :math:`i` give singular values in roughly
    :math:`[0.7, 1.2]`, not 1: the iteration maximizes the slope at zero instead.

    .. warning::
        ``torch.optim.Muon`` divides by :math:`\max(\lVert G\rVert_F, \epsilon)` and iterates in
        bfloat16; optax's ``orthogonalize_via_newton_schulz`` adds :math:`\epsilon` (1e-8 by default)
        and iterates in the input's dtype at the default matmul precision. Here float32 matmuls
        run at ``Precision.HIGHEST`` (no bfloat16 passes on TPUs or TF32 on GPUs unless
        ``ns_dtype`` asks for them).

    Args:
        x: an array of rank 2 or more.
        ns_coeffs: one triple :math:`(a, b, c)` for every iteration, a sequence of triples (one
            per iteration: the first ``ns_steps`` are used, the last repeated beyond its
            length, as in Polar Express's Algorithm 1), or a preset name of ``NS_PRESETS``:
            ``"standard"`` (Jordan's), ``"dion"`` (optax's preset), ``"polar_express"`` (Amsel
            et al. 2025, Algorithm 1, with its safety factor: :math:`X_0 = G/(1.01\|G\|_F + \epsilon)`).
        ns_steps: the number :math:`k \ge 1` of iterations.
        eps: :math:`\epsilon` of the normalization (``torch.optim.Muon`` clamps the norm at
            :math:`\epsilon` instead of adding it: the same to float32 rounding unless
            :math:`\|G\|_F \lesssim \epsilon`).
        ns_dtype: the dtype of the iteration: float32 (the default; matmuls at
            ``Precision.HIGHEST``), ``jnp.bfloat16`` as in Jordan's code, float64 under x64.
        preconditioning: optax's choices: ``"frobenius"`` (the above), ``"spectral"``
            (:math:`X_0 = G/(\|G\|_2 + \epsilon)`), ``"aol"`` and ``"schatten"`` (no
            normalization; the first iteration rescales :math:`X` as optax does).

    Returns:
        The orthogonalized matrices, in ``x``'s shape and dtype.

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024
        (https://kellerjordan.github.io/posts/muon/); Amsel, Persson, Musco & Gower, "The Polar
        Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
        arXiv:2505.16932, 2025, Algorithm 1.
    """
    owner = "orthogonalize"
    triples, per_iteration, factor = _coefficients(owner, ns_coeffs)
    _check_steps(owner, ns_steps)
    _check_preconditioning(owner, preconditioning)
    return _orthogonalize(x, _iteration_coefficients(owner, triples, per_iteration, ns_steps, "reference"),
                          factor, eps, ns_dtype, preconditioning)


def _check_preconditioning(owner, preconditioning):
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(f"{owner}: preconditioning must be one of {_PRECONDITIONINGS}, got {preconditioning!r}")


def _orthogonalize(x, schedule, factor, eps, ns_dtype, preconditioning):
    """:func:`orthogonalize` with checked arguments; ``schedule`` from :func:`_iteration_coefficients`."""
    if x.ndim < 2:
        raise ValueError(f"orthogonalize: x must have rank 2 or more, got shape {x.shape}")
    transposed = x.shape[-2] > x.shape[-1]
    X = x.astype(_ns_dtype(ns_dtype, x.dtype))
    if transposed:
        X = _mT(X)
    if preconditioning in ("frobenius", "spectral"):
        if preconditioning == "frobenius":
            norm = jnp.sqrt(jnp.sum(jnp.abs(widen(X)) ** 2, axis=(-2, -1), keepdims=True))
        else:
            norm = jnp.linalg.norm(widen(X), ord=2, axis=(-2, -1), keepdims=True)
        denom = norm * factor + eps
        X = X / jnp.where(denom > 0, denom, 1).astype(X.dtype)  # eps = 0: a zero matrix stays zero
    first = preconditioning in ("aol", "schatten")
    if not isinstance(schedule, _Traced):
        for i, coeffs in enumerate(schedule):
            X = _first_step(X, coeffs, preconditioning) if i == 0 and first else _ns_step(X, _gram(X), coeffs)
    else:  # a traced number of iterations: one loop, the coefficients indexed
        triples, steps = schedule.triples, schedule.steps
        table = jnp.asarray(triples, widen(jnp.zeros((), X.dtype)).real.dtype)

        def body(i, X):
            coeffs = tuple(table[jnp.minimum(i, len(triples) - 1), j].astype(X.real.dtype) for j in range(3))
            if first:
                return jax.lax.cond(i == 0, lambda X: _first_step(X, coeffs, preconditioning),
                                    lambda X: _ns_step(X, _gram(X), coeffs), X)
            return _ns_step(X, _gram(X), coeffs)

        X = jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), body, X)
    if transposed:
        X = _mT(X)
    return X.astype(x.dtype)
