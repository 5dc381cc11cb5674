r"""The kernels of ``chain(direction, [add_decayed_weights], scale_by_learning_rate)``.

Adam and AdamW, AMSGrad, Adamax, Nadam, RAdam, AdaX (``kernels/adam.cc``), AdaGrad and
Adadelta (``kernels/adaptive.cc``), Lion and Rprop (``kernels/sign.cc``). Each is described by
the direction's per-parameter state fields, by name, in the kernel's order (the link holding
them is the direction's), and by its scalars: names in the order of its C++ source's
``const float ... = h[...]`` line, and their values at this update from the direction's
hyperparameters and its state before it. ``nlr`` (:math:`-\gamma_t`) comes last in every kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optimizers.contract.moments import bias_correction, step_number
from optimizers.fused.backend import Kernel, kernel
from optimizers.fused.ffi import _call, _state_buffers, _state_tree
from optimizers.fused.links import advance, find, hyper, leaf_decays, learning_rate_link


def buffers_kernel(target, reads, names, scalars, flat, **attrs):
    """``run`` for a kernel over the per-parameter fields ``reads`` (in its order, wherever they are in
    the chain), whose scalars are ``names`` (its C++ order): ``scalars(state, params) -> (their values
    by name, the per-leaf info columns or None, the links after this update by index)``."""

    def run(grads, state, params, step):
        values, info, new = scalars(state, params)
        state = list(state)  # the buffers stay the old ones until the kernel's results replace them
        fields = [(i, f) for f in reads for i in [find(state, f)] if i is not None]
        g, treedef = jax.tree.flatten(grads)
        buffers = [_state_buffers(getattr(state[i], f), flat) for i, f in fields]
        for i, link in new.items():
            state[i] = link
        out, buffers = _call(f"optimizers_{target}", hyper(names, values), info, jax.tree.leaves(params), g,
                             buffers, step, flat=flat, **attrs)
        for (i, f), b in zip(fields, buffers):
            state[i] = state[i]._replace(**{f: _state_tree(b, treedef, flat)})
        return treedef.unflatten(out), tuple(state)

    return run


def direction(target: str, reads: tuple, values: dict, scalars: tuple, compute, learning_rate, weight_decay=None,
              mask=None, flat=False, link_update=None, coded=True, **attrs) -> Kernel:
    """The kernel ``optimizers_<target>`` of ``chain(direction, [add_decayed_weights], scale_by_learning_rate)``.

    ``reads``: the direction's per-parameter fields, in the kernel's order (``flat``: one flat array
    each); ``values``: its hyperparameters (numbers or schedules, as it was built with);
    ``scalars``: the kernel's scalars' names in its order, ``compute(hp, link)`` their values (all
    but ``nlr``) from the hyperparameters at this update and the direction's state before it;
    ``link_update(hp, link)``: the direction's other new fields (a dict); ``attrs``: the kernel's
    static attributes. The weight decay, where the chain has the link, is the kernel's per-leaf
    number (0 where ``mask`` is off).
    """

    def values_at(state, params):
        i, j, k = find(state, *reads), find(state, hyper=("weight_decay",)), learning_rate_link(state)
        link, decay_link, new = state[i], None if j is None else state[j], {}
        hp, new_link = advance(link, **values)
        new[i] = new_link._replace(**link_update(hp, link)) if link_update else new_link
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        lam = jnp.zeros([], jnp.float32)
        if decay_link is not None:
            wd, new[j] = advance(decay_link, weight_decay=weight_decay)
            lam = wd["weight_decay"]
        return ({**compute(hp, link), "nlr": -lr["learning_rate"]}, [leaf_decays(decay_link, lam, mask, params)],
                new)

    return Kernel(buffers_kernel(target, reads, scalars, values_at, flat, **attrs), tuple(reads), coded=coded)


ADAM = ("b1", "ob1", "b2", "ob2", "c1", "c2", "eps", "nlr")  # adam.cc: Adam, AMSGrad; trust_ratio.cc: LAMB's first 7


def adam_scalars(hp, link) -> dict:
    r""":math:`\beta_1, 1-\beta_1, \beta_2, 1-\beta_2, 1-\beta_1^t, 1-\beta_2^t, \epsilon`."""
    t = step_number(link.count, hp["b1"].dtype)
    return dict(b1=hp["b1"], ob1=1 - hp["b1"], b2=hp["b2"], ob2=1 - hp["b2"], c1=bias_correction(hp["b1"], t),
                c2=bias_correction(hp["b2"], t), eps=hp["eps"])


@kernel("adam", "adamw")
def _adam(flat, learning_rate, b1, b2, eps, weight_decay=None, mask=None):
    return direction("adam", ("mu", "nu"), dict(b1=b1, b2=b2, eps=eps), ADAM, adam_scalars, learning_rate,
                     weight_decay, mask, flat)


@kernel("amsgrad")
def _amsgrad(flat, learning_rate, b1, b2, eps, raw: bool):
    return direction("amsgrad", ("mu", "nu", "nu_max"), dict(b1=b1, b2=b2, eps=eps), ADAM, adam_scalars,
                     learning_rate, flat=flat, raw=raw)


@kernel("adamax")
def _adamax(flat, learning_rate, b1, b2, eps):
    def compute(hp, link):
        t = step_number(link.count, hp["b1"].dtype)
        return dict(b1=hp["b1"], ob1=1 - hp["b1"], b2=hp["b2"], eps=hp["eps"], c1=bias_correction(hp["b1"], t))

    return direction("adamax", ("mu", "nu"), dict(b1=b1, b2=b2, eps=eps), ("b1", "ob1", "b2", "eps", "c1", "nlr"),
                     compute, learning_rate, flat=flat)


@kernel("nadam")
def _nadam(flat, learning_rate, b1, b2, eps, schedule):
    """``schedule(hp, link) -> (mu_t, mu_{t+1}, prod_t)``: the rule's momentum schedule."""

    def compute(hp, link):
        mu_t, mu_next, prod = schedule(hp, link)
        t = step_number(link.count, hp["b1"].dtype)
        return dict(b1=hp["b1"], ob1=1 - hp["b1"], b2=hp["b2"], ob2=1 - hp["b2"], c2=bias_correction(hp["b2"], t),
                    eps=hp["eps"], k1=1 - mu_t, k2=1 - prod, k3=mu_next, k4=1 - prod * mu_next)

    return direction("nadam", ("mu", "nu"), dict(b1=b1, b2=b2, eps=eps),
                     ("b1", "ob1", "b2", "ob2", "c2", "eps", "k1", "k2", "k3", "k4", "nlr"), compute, learning_rate,
                     flat=flat, link_update=lambda hp, link: {"mu_product": schedule(hp, link)[2]})


@kernel("radam")
def _radam(flat, learning_rate, b1, b2, eps, eps_on_raw_sqrt: bool, rectification):
    """``rectification(b2, t) -> (rectified, r_t)``: the rule's."""

    def compute(hp, link):
        t = step_number(link.count, hp["b1"].dtype)
        c2 = bias_correction(hp["b2"], t)
        rectified, r = rectification(hp["b2"], t)
        return dict(b1=hp["b1"], ob1=1 - hp["b1"], b2=hp["b2"], ob2=1 - hp["b2"], c1=bias_correction(hp["b1"], t),
                    c2=c2, eps=hp["eps"], rectified=rectified, r=r, root_c2=jnp.sqrt(c2))

    return direction("radam", ("mu", "nu"), dict(b1=b1, b2=b2, eps=eps),
                     ("b1", "ob1", "b2", "ob2", "c1", "c2", "eps", "rectified", "r", "root_c2", "nlr"), compute,
                     learning_rate, flat=flat, eps_on_raw_sqrt=eps_on_raw_sqrt)


@kernel("adax")
def _adax(flat, learning_rate, b1, b2, eps, weight_and_eps):
    """``weight_and_eps(hp, link) -> (w_t, the eps added to sqrt(v_hat))``: the rule's."""

    def compute(hp, link):
        w, eps_t = weight_and_eps(hp, link)
        return dict(b1=hp["b1"], ob1=1 - hp["b1"], w=w, eps=eps_t)

    return direction("adax", ("mu", "nu"), dict(b1=b1, b2=b2, eps=eps), ("b1", "ob1", "w", "eps", "nlr"), compute,
                     learning_rate, flat=flat)


@kernel("adagrad")
def _adagrad(flat, learning_rate, eps):
    return direction("adagrad", ("sum_of_squares",), dict(eps=eps), ("eps", "nlr"),
                     lambda hp, link: dict(eps=hp["eps"]), learning_rate, flat=flat)


@kernel("adadelta")
def _adadelta(flat, learning_rate, rho, eps):
    return direction("adadelta", ("nu", "delta_nu"), dict(rho=rho, eps=eps), ("rho", "orho", "eps", "nlr"),
                     lambda hp, link: dict(rho=hp["rho"], orho=1 - hp["rho"], eps=hp["eps"]), learning_rate, flat=flat)


@kernel("lion")
def _lion(flat, learning_rate, b1, b2, weight_decay, mask):
    return direction("lion", ("mu",), dict(b1=b1, b2=b2), ("b1", "ob1", "b2", "ob2", "nlr"),
                     lambda hp, link: dict(b1=hp["b1"], ob1=1 - hp["b1"], b2=hp["b2"], ob2=1 - hp["b2"]),
                     learning_rate, weight_decay, mask, flat)


@kernel("rprop")
def _rprop(flat, learning_rate, eta_plus, eta_minus, min_scale, max_scale, torch_form: bool):
    static = dict(up=eta_plus, down=eta_minus, low=min_scale, high=max_scale)
    return direction("rprop", ("step_size", "prev_grad"), {}, ("up", "down", "low", "high", "nlr"),
                     lambda hp, link: static, learning_rate, flat=flat, torch_form=torch_form)
