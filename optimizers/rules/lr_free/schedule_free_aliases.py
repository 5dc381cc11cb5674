"""Schedule-Free AdamW and SGD (Defazio et al. 2024), as the authors' ``schedulefree`` package: the
wrapper of ``schedule_free.py`` around Adam's direction or plain SGD."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

import schedules
from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex, store, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, float_dtype,
                                             given, init_hyperparams)
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule
from optimizers.rules.lr_free.schedule_free import check_form, schedule_free


def _warmed_up(learning_rate: ScalarOrSchedule, warmup_steps: Optional[int], form: str = "reference"
               ) -> ScalarOrSchedule:
    r"""The reference's warm-up: :math:`\gamma_t = \gamma \min((t+1)/W, 1)` (:math:`\gamma/W` at :math:`t=0`);
    optax's (``form="optax"``): :math:`\gamma \min(t/W, 1)` (0 at :math:`t=0`)."""
    if not warmup_steps:
        return learning_rate
    shift = 0 if form == "optax" else 1

    def schedule(step):
        ramp = (jnp.asarray(step, float_dtype()) + shift) / warmup_steps
        return schedules.resolve(learning_rate, step) * jnp.minimum(ramp, 1.0)

    return schedule


def _check_warmup(owner, warmup_steps):
    if warmup_steps is not None and (not isinstance(warmup_steps, int) or warmup_steps < 0):
        raise ValueError(f"{owner}: warmup_steps must be None or an int >= 0, got {warmup_steps!r}")


@declare_state(nonnegative=("nu",), elementwise=True)
class ScaleByScheduleFreeAdamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b2": ..., "eps": ...}
    nu: optax.Updates  # v_t, second moment


def scale_by_schedule_free_adam(b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8
                                ) -> optax.GradientTransformation:
    r"""Schedule-Free AdamW's direction: the gradient over Adam's bias-corrected second moment.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = \frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    (``schedulefree.AdamWScheduleFree``: no first moment, :math:`\epsilon` outside the root).

    Args:
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`.
    """
    owner = "scale_by_schedule_free_adam"
    check_range(owner, "b2", b2, 0.0, 1.0, high_open=True)
    check_range(owner, "eps", eps, 0.0)
    values = given(b2=b2, eps=eps)

    def init_fn(params):
        return ScaleByScheduleFreeAdamState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                            jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        beta2, eps_ = hp["b2"], hp["eps"]
        t = state.count.astype(beta2.dtype) + 1
        correction = 1 - beta2**t
        nu = jax.tree.map(lambda g, v: beta2 * widen(v) + (1 - beta2) * widen(g) ** 2, updates, state.nu)
        out = jax.tree.map(lambda g, v: store(widen(g) / (eps_ + jnp.sqrt(v / correction)), g.dtype), updates, nu)
        nu = jax.tree.map(lambda v, s: store(v, s.dtype), nu, state.nu)
        return out, ScaleByScheduleFreeAdamState(optax.safe_increment(state.count), hp, nu)

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Defazio et al. 2024",
                   update="`z-=γ(g/(√v̂+ε)+λy); x=(1-c)x+cz; y=(1-β₁)z+β₁x`",
                   test_kwargs=dict(learning_rate=0.01))
def schedule_free_adamw(learning_rate: ScalarOrSchedule = 0.0025, warmup_steps: Optional[int] = None,
                        b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
                        weight_decay: ScalarOrSchedule = 0.0, weight_lr_power: float = 2.0, state_dtype=None, *,
                        r: float = 0.0, mask: MaskOrFn = None, form: str = "reference"
                        ) -> optax.GradientTransformation:
    r"""Schedule-Free AdamW: :func:`schedule_free` around :func:`scale_by_schedule_free_adam`.

    .. math::
        z_{t+1} = z_t - \gamma_t \left(\frac{g_t}{\sqrt{v_t/(1-\beta_2^{t+1})} + \epsilon}
            + \lambda y_t\right), \quad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}, \quad
        y_{t+1} = (1-\beta_1) z_{t+1} + \beta_1 x_{t+1}

    with the gradient :math:`g_t` taken at :math:`y_t` (the params), the weight decay at
    :math:`y_t`, and :math:`c_{t+1}` as in :func:`schedule_free`. The warm-up is the
    reference's: :math:`\gamma_t = \gamma \min((t+1)/W, 1)`, so the first update uses
    :math:`\gamma/W`. ``update`` returns :math:`y_{t+1} - y_t`; evaluate at
    :func:`schedule_free_eval_params`. This is ``schedulefree.AdamWScheduleFree`` (and its
    ``...Reference`` class) step for step.

    .. warning::
        ``optax.contrib.schedule_free_adamw`` with ``warmup_steps`` moves :math:`z` with
        :math:`\gamma_t = \gamma t/W` (0 at the first update) while its averaging weights use
        :math:`\gamma (t+1)/W`; it has no ``r``. Without a warm-up the two agree up to rounding;
        ``form="optax"`` gives optax's numbers with one.

    Args:
        learning_rate: :math:`\gamma \ge 0` (a number or a schedule, multiplied by the warm-up).
        warmup_steps: :math:`W`, the linear warm-up's length, or ``None``/0 for none.
        b1: :math:`\beta_1 \in (0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon \ge 0`, outside the root.
        weight_decay: :math:`\lambda \ge 0`, decoupled, at :math:`y`, multiplied by :math:`\gamma_t`.
        weight_lr_power: :math:`p \ge 0` of :func:`schedule_free`.
        state_dtype: the dtype of :math:`z`, or ``None`` (the params').
        r: :math:`r \ge 0` of :func:`schedule_free`.
        mask: the leaves that decay (as in :func:`optimizers.adamw`).
        form: ``"reference"``, or ``"optax"``: ``optax.contrib.schedule_free_adamw`` step for
            step (its warm-up :math:`\gamma t/W` for :math:`z`, see :func:`schedule_free`; ``r=0``).

    Raises:
        ValueError: a hyperparameter outside its range (naming it).
        TypeError: complex params at ``init``.

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1 (with Adam's
        second moment, Section 6); PyPI ``schedulefree`` 1.4.1, ``AdamWScheduleFree``.
    """
    _check_warmup("schedule_free_adamw", warmup_steps)
    check_form("schedule_free_adamw", form, r)
    lr = _warmed_up(learning_rate, warmup_steps, form)
    check_learning_rate("schedule_free_adamw", learning_rate)
    check_range("schedule_free_adamw", "b1", b1, 0.0, 1.0, low_open=True, high_open=True)
    base = optax.chain(scale_by_schedule_free_adam(b2, eps), add_decayed_weights(weight_decay, mask),
                       scale_by_learning_rate(lr))
    tx = schedule_free(base, lr, b1, weight_lr_power, state_dtype, r=r, form=form)

    def init(params):
        reject_complex("schedule_free_adamw", params, "its second moment is defined for real params only "
                       "(as in schedulefree.AdamWScheduleFree)")
        return tx.init(params)

    return optax.GradientTransformation(init, tx.update)


@declare_optimizer(paper="Defazio et al. 2024", update="`z-=γ(g+λy); x=(1-c)x+cz; y=(1-β₁)z+β₁x`",
                   test_kwargs=dict(learning_rate=0.01))
def schedule_free_sgd(learning_rate: ScalarOrSchedule = 1.0, warmup_steps: Optional[int] = None,
                      b1: ScalarOrSchedule = 0.9, weight_decay: Optional[ScalarOrSchedule] = None,
                      weight_lr_power: float = 2.0, state_dtype=None, *, r: float = 0.0,
                      mask: MaskOrFn = None, form: str = "reference") -> optax.GradientTransformation:
    r"""Schedule-Free SGD: :func:`schedule_free` around SGD.

    .. math::
        z_{t+1} = z_t - \gamma_t (g_t + \lambda y_t), \quad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}, \quad
        y_{t+1} = (1-\beta_1) z_{t+1} + \beta_1 x_{t+1}

    with :math:`g_t` taken at :math:`y_t`, :math:`c_{t+1}` and the warm-up as in
    :func:`schedule_free_adamw`. ``update`` returns :math:`y_{t+1} - y_t`. This is
    ``schedulefree.SGDScheduleFree`` (``momentum`` is ``b1``) step for step.

    .. warning::
        ``optax.contrib.schedule_free_sgd``'s warm-up skips the step-0 value as in
        :func:`schedule_free_adamw`; it has no ``r``.

    Args:
        learning_rate: :math:`\gamma \ge 0` (the reference's default 1.0).
        warmup_steps: :math:`W`, or ``None``/0 for none.
        b1: :math:`\beta_1 \in (0, 1)` (the reference's ``momentum``).
        weight_decay: :math:`\lambda \ge 0` at :math:`y`, or ``None`` (none).
        weight_lr_power, state_dtype, r: as in :func:`schedule_free`.
        mask: the leaves that decay.
        form: ``"reference"``, or ``"optax"``: ``optax.contrib.schedule_free_sgd`` step for step.

    References:
        Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1; PyPI
        ``schedulefree`` 1.4.1, ``SGDScheduleFree``.
    """
    _check_warmup("schedule_free_sgd", warmup_steps)
    check_form("schedule_free_sgd", form, r)
    lr = _warmed_up(learning_rate, warmup_steps, form)
    check_learning_rate("schedule_free_sgd", learning_rate)
    check_range("schedule_free_sgd", "b1", b1, 0.0, 1.0, low_open=True, high_open=True)
    links = [] if weight_decay is None else [add_decayed_weights(weight_decay, mask)]
    base = optax.chain(*links, scale_by_learning_rate(lr))
    return schedule_free(base, lr, b1, weight_lr_power, state_dtype, r=r, form=form)
