r"""The kernels of the other chains: SGD, RMSProp, Amos, NovoGrad, Funnelled SGDM, LAMB, LARS, SM3, Adafactor.

Each reads its links by what they hold (:mod:`optimizers.fused.links`): a momentum is the link
with a ``trace`` (or ``ema``) field, the weight decay the link whose one hyperparameter is
``weight_decay``, the learning rate the last link whose one hyperparameter is ``learning_rate``;
a link the chain has left out (``optax.identity``) is simply not found. Its scalars are named as
in its C++ source (``const float ... = h[...]``), ``nlr`` (:math:`-\gamma_t`) last. Where the
kernel takes a number the chain computes across leaves (NovoGrad's second moments, Funnelled
SGDM's global scale, Adafactor's :math:`\hat\beta_2`, Amos's per-leaf :math:`\eta`), the rule
hands its own function over in ``needs``, so the formula stays in one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optimizers.contract.dtypes import store_like
from optimizers.contract.hyperparams import is_zero
from optimizers.contract.moments import step_number
from optimizers.fused.backend import Kernel, kernel
from optimizers.fused.directions import ADAM, adam_scalars, buffers_kernel
from optimizers.fused.ffi import _call, _ffi, _merge, _outputs, _state_buffers, _state_tree, _with_elements
from optimizers.fused.flat_state import unflatten_state
from optimizers.fused.links import advance, find, hyper, leaf_decays, leaf_flags, learning_rate_link, tick


@kernel("sgd")
def _sgd(flat, learning_rate, momentum, nesterov: bool, weight_decay, mask):
    """``chain(add_decayed_weights or identity, trace or identity, scale_by_learning_rate)`` (momentum.cc)."""

    names = ("mu", "nlr")

    def scalars(state, params):
        j, m, k = find(state, hyper=("weight_decay",)), find(state, "trace"), learning_rate_link(state)
        lr, new = advance(state[k], learning_rate=learning_rate)
        new, lam, mu = {k: new}, jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32)
        if j is not None:
            wd, new[j] = advance(state[j], weight_decay=weight_decay)
            lam = wd["weight_decay"]
        if m is not None:
            hp, new[m] = advance(state[m], momentum=momentum)
            mu = hp["momentum"]
        decays = leaf_decays(None if j is None else state[j], lam, mask, params)
        return dict(mu=mu, nlr=-lr["learning_rate"]), [decays], new

    has_momentum = not is_zero(momentum)  # else no trace link, and no state to code
    return Kernel(buffers_kernel("sgd", ("trace",), names, scalars, flat, momentum=has_momentum, nesterov=nesterov),
                  ("trace",), coded=has_momentum)


@kernel("rmsprop")
def _rmsprop(flat, learning_rate, decay, eps, momentum, centered: bool, eps_in_sqrt: bool, kind: int):
    """``chain(scale_by_rms, trace or identity, scale_by_learning_rate)`` (adaptive.cc); ``kind``: 0 no
    momentum, 1 heavy ball, 2 Nesterov."""
    reads = ("nu",) + ("mu",) * centered + ("trace",) * bool(kind)

    names = ("rho", "orho", "rho_orho", "eps", "mu", "nlr")

    def scalars(state, params):
        i, k = find(state, "nu"), learning_rate_link(state)
        new = {}
        hp, new[i] = advance(state[i], decay=decay, eps=eps)
        mu = jnp.zeros([], jnp.float32)
        if kind:
            m = find(state, "trace")
            trace_hp, new[m] = advance(state[m], momentum=momentum)
            mu = trace_hp["momentum"]
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        rho = hp["decay"]
        return dict(rho=rho, orho=1 - rho, rho_orho=rho * (1 - rho), eps=hp["eps"], mu=mu,
                    nlr=-lr["learning_rate"]), None, new

    return Kernel(buffers_kernel("rmsprop", reads, names, scalars, flat, centered=centered, eps_in_sqrt=eps_in_sqrt,
                               momentum=kind), reads, coded=True)


@kernel("amos")
def _amos(flat, learning_rate, beta, c_coef, d_coef, momentum, eps, etas, has_momentum: bool):
    """``chain(scale_by_amos, scale_by_ema or identity, scale_by_learning_rate)``, a slot per entry
    (adaptive.cc); ``etas(params)``: the rule's per-leaf :math:`\\eta` tree."""
    reads = ("v", "b") + ("ema",) * has_momentum

    names = ("beta", "obeta", "corr", "eps", "sc", "xi", "mu", "omu", "nlr")

    def scalars(state, params):
        i, k = find(state, "v", "b"), learning_rate_link(state)
        link, new = state[i], {}
        hp, new[i] = advance(link, learning_rate=learning_rate, beta=beta)
        x, b1 = hp["learning_rate"], hp["beta"]
        mu = jnp.zeros([], jnp.float32)
        if has_momentum:
            m = find(state, "ema")
            ema_hp, new[m] = advance(state[m], decay=momentum)
            mu = ema_hp["decay"]
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        correction = 1 - b1 ** step_number(link.count, b1.dtype)
        leaf_etas = jax.tree.structure(params).flatten_up_to(etas(params))
        info = [jnp.asarray(e, jnp.float32) for e in leaf_etas], [d_coef * jnp.sqrt(x * e) for e in leaf_etas]
        return dict(beta=b1, obeta=1 - b1, corr=correction, eps=eps, sc=c_coef * jnp.sqrt(x), xi=x, mu=mu, omu=1 - mu,
                    nlr=-lr["learning_rate"]), info, new

    return Kernel(buffers_kernel("amos", reads, names, scalars, flat, momentum=has_momentum), reads)


@kernel("novograd")
def _novograd(flat, learning_rate, values: dict, second_moments):
    """``chain(scale_by_novograd, scale_by_learning_rate)`` (momentum.cc): the per-leaf second moments
    as the chain computes them (``second_moments(grads, link, hp) -> (nu, denominators)``), then one pass."""

    def run(grads, state, params, step):
        state = list(state)
        i, k = find(state, "mu", "nu"), learning_rate_link(state)
        link = state[i]
        hp, new_link = advance(link, **values)
        lr, state[k] = advance(state[k], learning_rate=learning_rate)
        nu, dens = second_moments(grads, link, hp)
        h = hyper(("b1", "lam", "nlr"), dict(b1=hp["b1"], lam=hp["weight_decay"], nlr=-lr["learning_rate"]))
        g, treedef = jax.tree.flatten(grads)
        out, (mu,) = _call("optimizers_novograd", h, [jax.tree.leaves(dens)], jax.tree.leaves(params), g,
                           [_state_buffers(link.mu, flat)], step, flat=flat)
        state[i] = new_link._replace(mu=_state_tree(mu, treedef, flat), nu=store_like(nu, link.nu))
        return treedef.unflatten(out), tuple(state)

    return Kernel(run, ("mu", "nu"), flat=("mu",))


@kernel("funnelled_sgdm")
def _funnelled_sgdm(flat, learning_rate, values: dict, scale):
    """``chain(scale_by_funnelled_sgdm, scale_by_learning_rate)`` (momentum.cc): the global scale as the
    chain computes it (``scale(hp, link, grads)``: a dot product over every leaf), then one pass."""
    fields = ("gain", "grad_avg", "trace")

    def run(grads, state, params, step):
        state = list(state)
        i, k = find(state, *fields), learning_rate_link(state)
        link = state[i]
        hp, new_link = advance(link, **values)
        lr, state[k] = advance(state[k], learning_rate=learning_rate)
        tree_link = unflatten_state((link,), ("trace",), grads)[0] if flat else link
        s = scale(hp, tree_link, grads)  # the chain's dot product, leaf by leaf
        h = hyper(("gp", "beta", "obeta", "mu", "scale", "nlr"),
                  dict(gp=hp["gamma_p"], beta=hp["beta"], obeta=1 - hp["beta"], mu=hp["momentum"], scale=s,
                       nlr=-lr["learning_rate"]))
        g, treedef = jax.tree.flatten(grads)
        buffers = [_state_buffers(getattr(link, f), flat) for f in fields]
        out, buffers = _call("optimizers_funnelled_sgdm", h, None, jax.tree.leaves(params), g, buffers, step,
                             flat=flat)
        state[i] = new_link._replace(scale=s, **{f: _state_tree(b, treedef, flat) for f, b in zip(fields, buffers)})
        return treedef.unflatten(out), tuple(state)

    return Kernel(run, fields)


@kernel("lamb")
def _lamb(flat, learning_rate, b1, b2, eps, weight_decay, mask, trust_ratio_mask, min_param_norm, max_param_norm):
    """``chain(scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate)``, two
    passes (trust_ratio.cc: the moments and both norms of each leaf, then the params)."""

    names = (*ADAM[:-1], "coef", "min_norm", "max_norm", "nlr")

    def scalars(state, params):
        i, j = find(state, "mu", "nu"), find(state, hyper=("weight_decay",))
        t, k = find(state, hyper=("trust_coefficient",)), learning_rate_link(state)
        new = {}
        hp, new[i] = advance(state[i], b1=b1, b2=b2, eps=eps)
        wd, new[j] = advance(state[j], weight_decay=weight_decay)
        tr, new[t] = advance(state[t], trust_coefficient=1.0)
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        values = dict(adam_scalars(hp, state[i]), coef=tr["trust_coefficient"], min_norm=jnp.float32(min_param_norm),
                      max_norm=jnp.float32(max_param_norm), nlr=-lr["learning_rate"])
        info = [leaf_decays(state[j], wd["weight_decay"], mask, params), leaf_flags(trust_ratio_mask, params)]
        return values, info, new

    return Kernel(buffers_kernel("lamb", ("mu", "nu"), names, scalars, flat), ("mu", "nu"))


@kernel("lars")
def _lars(flat, learning_rate, values: dict, momentum, nesterov: bool, weight_decay_mask, trust_ratio_mask):
    """``chain(scale_by_lars, scale_by_learning_rate, trace)``, two passes (trust_ratio.cc: the norms of
    each leaf's gradient and params, then the momentum and the params); ``values``: LARS's
    hyperparameters as its link holds them."""

    names = ("coef", "eps", "mu", "nlr")

    def scalars(state, params):
        i, k, m = find(state, hyper=tuple(values)), learning_rate_link(state), find(state, "trace")
        new = {}
        hp, new[i] = advance(state[i], **values)
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        mu, new[m] = advance(state[m], momentum=momentum)
        betas = leaf_decays(state[i], hp["weight_decay"], weight_decay_mask, params)
        return (dict(coef=hp["trust_coefficient"], eps=hp.get("eps", jnp.float32(0)), mu=mu["momentum"],
                     nlr=-lr["learning_rate"]), [betas, leaf_flags(trust_ratio_mask, params)], new)

    return Kernel(buffers_kernel("lars", ("trace",), names, scalars, flat, nesterov=nesterov), ("trace",))


@kernel("sm3")
def _sm3(flat, learning_rate, eps_root, momentum, two: bool, has_momentum: bool):
    """``chain(scale_by_sm3, scale_by_ema or identity, scale_by_learning_rate)`` (sm3.cc): SM3-II (``two``)
    in one pass, SM3-I in two; no flat layout (the covers are not shaped like the params)."""
    reads = ("mu",) + ("ema",) * has_momentum

    names = ("eps", "b", "ob", "nlr")

    def scalars(state, params):
        i, k = find(state, "mu"), learning_rate_link(state)
        new = {}
        hp, new[i] = advance(state[i], eps_root=eps_root)
        b = jnp.zeros([], jnp.float32)
        if has_momentum:
            m = find(state, "ema")
            ema_hp, new[m] = advance(state[m], decay=momentum)
            b = ema_hp["decay"]
        lr, new[k] = advance(state[k], learning_rate=learning_rate)
        return dict(eps=hp["eps_root"], b=b, ob=1 - b, nlr=-lr["learning_rate"]), None, new

    return Kernel(buffers_kernel("sm3", reads, names, scalars, False, two=two, momentum=has_momentum), reads, flat=None)


@kernel("adafactor")
def _adafactor(flat, learning_rate, eps, clipping_threshold, min_scale, b1, relative_step: bool, beta2):
    """:func:`adafactor`'s chain (adafactor.cc): per leaf the full moment, or the row and column means
    of a factored leaf, updated in place; ``beta2(count)``: the rule's :math:`\\hat\\beta_{2,t}`;
    ``min_scale``/``clipping_threshold`` ``None``: no parameter scale/clipping (0 to the kernel)."""
    names = ("beta", "obeta", "eps1", "d", "eps2", "b1", "ob1", "nlr")

    def scalars(state):
        """The kernel's scalars and the links after this update (those it does not read just count)."""
        i, e, k = find(state, "v_row", "v_col", "v"), find(state, "ema"), learning_rate_link(state)
        new = [tick(link) for link in state]
        hp, new[k] = advance(state[k], learning_rate=learning_rate)
        rho = hp["learning_rate"]
        if relative_step:
            rho = jnp.minimum(rho, jax.lax.rsqrt(step_number(state[k].count, rho.dtype)))
        b = {"decay": 0.0}
        if e is not None:
            b, new[e] = advance(state[e], decay=b1)
        beta = beta2(state[i].count)
        return hyper(names, dict(beta=beta, obeta=1 - beta, eps1=eps, d=_or_zero(clipping_threshold),
                                 eps2=_or_zero(min_scale), b1=b["decay"], ob1=1 - b["decay"], nlr=-rho)), new, i, e

    def run(grads, state, params, step):
        h, state, i, e = scalars(state)
        g, treedef = jax.tree.flatten(grads)
        p = jax.tree.leaves(params)
        rms = state[i]
        rows, cols, full = (treedef.flatten_up_to(x) for x in (rms.v_row, rms.v_col, rms.v))
        mu = treedef.flatten_up_to(state[e].ema) if e is not None else []
        kept = _with_elements(g)
        factored = {j: full[j].shape != g[j].shape for j in kept}
        operands = [[(rows[j], cols[j]) if factored[j] else (full[j],) for j in kept]]
        if e is not None:
            operands.append([(mu[j],) for j in kept])
        out, new = _ffi("optimizers_adafactor", h, [[jnp.float32(factored[j]) for j in kept]],
                        [p[j] for j in kept], [g[j] for j in kept], operands, step, momentum=e is not None)
        for j, leaf in zip(kept, new[0]):  # the operands back in place
            if factored[j]:
                rows[j], cols[j] = leaf
            else:
                (full[j],) = leaf
        state[i] = rms._replace(v_row=treedef.unflatten(rows), v_col=treedef.unflatten(cols), v=treedef.unflatten(full))
        if e is not None:
            state[e] = state[e]._replace(ema=treedef.unflatten(_merge(kept, [m for (m,) in new[1]], mu)))
        return treedef.unflatten(_outputs(kept, out, p, g, step)), tuple(state)

    return Kernel(run, ("v_row", "v_col", "v", "ema"), flat=None)


def _or_zero(value):
    """``value``, or 0 for ``None`` (no clipping, no parameter scale); an array as given (a traced
    one under ``optax.inject_hyperparams``)."""
    return 0.0 if value is None else value
