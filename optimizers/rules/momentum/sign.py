"""signSGD and Signum: steps of the sign of the gradient, or of its momentum."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store_like, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.moments import ema
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_WHY = ("its step is the sign of each real coordinate; split complex params into real and imaginary leaves "
        "to run it on the real pair")


def _scale_by_sign(owner: str) -> optax.GradientTransformation:
    def init_fn(params):
        reject_complex(owner, params, _WHY)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(jnp.sign, updates), state

    return transformation(owner, init_fn, update_fn)


def scale_by_sign() -> optax.GradientTransformation:
    r"""The sign of each coordinate: :math:`u_t = \mathrm{sign}(g_t)`, with :math:`\mathrm{sign}(0) = 0`.

    The direction of signSGD (Bernstein et al. 2018), and ``optax.scale_by_sign``
    on real params. Stateless (``optax.EmptyState``).

    .. warning::
        Complex params raise ``TypeError`` at ``init``: ``optax.scale_by_sign`` gives
        :math:`z/|z|` there (``jnp.sign`` of a complex number), not the sign of each real coordinate.

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
        Non-Convex Problems", ICML 2018 (signSGD).
    """
    return _scale_by_sign("scale_by_sign")


# Conformance: a constant sign step never settles; in Rosenbrock's curved valley it needs a fast decay.
@declare_optimizer(paper="Bernstein et al. 2018", update="`θ-=γ sign(g)`",
                   test_kwargs=dict(learning_rate=lambda t: 3e-2 * 0.999**t))
def sign_sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    r"""signSGD: :math:`\theta_t = \theta_{t-1} - \gamma_t\, \mathrm{sign}(g_t)` (:func:`scale_by_sign`).

    ``optax.sign_sgd`` on real params, and ``pytorch_optimizer.SignSGD(momentum=0)``. A constant
    step does not settle at a minimum (it oscillates within :math:`\gamma` of it): decay the
    learning rate with a schedule. No fused kernel: it runs its chain.

    .. warning::
        Complex params raise ``TypeError`` (optax's takes :math:`z/|z|`; see :func:`scale_by_sign`).

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
        Non-Convex Problems", ICML 2018 (signSGD).
    """
    return optax.chain(_scale_by_sign("sign_sgd"), scale_by_learning_rate(learning_rate))


@declare_state(elementwise=True)
class ScaleBySignumState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"beta": ...}
    mu: optax.Updates  # m_t, same tree as params (accumulator_dtype, or the params' dtype)


def scale_by_signum(beta: ScalarOrSchedule = 0.9, accumulator_dtype=None) -> optax.GradientTransformation:
    r"""Signum's direction: the sign of the gradient's momentum.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \quad u_t = \mathrm{sign}(m_t)

    with :math:`m_0 = 0` and :math:`\mathrm{sign}(0) = 0`: the paper's Signum, optax's
    ``signum`` direction (its ``ema(beta, debias=False)`` then ``scale_by_sign``) and
    ``pytorch_optimizer.SignSGD(momentum=beta)``'s. ``accumulator_dtype`` keeps :math:`m_t` in
    that dtype (saturating), as optax's keyword; the sign is taken of this step's unrounded
    :math:`m_t`.

    .. warning::
        Complex params raise ``TypeError`` at ``init`` (optax's takes :math:`m/|m|`).

    Args:
        beta: :math:`\beta \in [0, 1)` (0 is signSGD).
        accumulator_dtype: the dtype of :math:`m_t`, or ``None`` (the params').

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
        Non-Convex Problems", ICML 2018 (Signum).
    """
    check_range("scale_by_signum", "beta", beta, 0.0, 1.0, high_open=True)
    check_state_dtype("scale_by_signum", "accumulator_dtype", accumulator_dtype)
    values = dict(beta=beta)

    def init_fn(params):
        reject_complex("scale_by_signum", params, _WHY)
        return ScaleBySignumState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                  zeros_in(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        m = ema(updates, state.mu, hp["beta"])
        out = jax.tree.map(lambda g, a: jnp.sign(a).astype(g.dtype), updates, m)
        return out, ScaleBySignumState(optax.safe_increment(state.count), hp, store_like(m, state.mu))

    return transformation("scale_by_signum", init_fn, update_fn)


@declare_optimizer(paper="Bernstein et al. 2018", update="`m=βm+(1-β)g; θ-=γ sign(m)`",
                   test_kwargs=dict(learning_rate=lambda t: 3e-3 * 0.9997**t))
def signum(learning_rate: ScalarOrSchedule, beta: ScalarOrSchedule = 0.9,
           accumulator_dtype=None) -> optax.GradientTransformation:
    r"""Signum: :math:`\theta_t = \theta_{t-1} - \gamma_t\, \mathrm{sign}(m_t)` (:func:`scale_by_signum`).

    ``optax.signum`` on real params, and ``pytorch_optimizer.SignSGD(momentum=beta)``. No fused
    kernel: it runs its chain.

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
        Non-Convex Problems", ICML 2018 (Signum).
    """
    return optax.chain(scale_by_signum(beta, accumulator_dtype), scale_by_learning_rate(learning_rate))
