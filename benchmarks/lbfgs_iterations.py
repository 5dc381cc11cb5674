"""Iterations and function evaluations of L-BFGS to a gradient tolerance (docs/guides/lbfgs_and_line_search.md).

float64 everywhere, memory 10, stop at ``max|g| <= 1e-6``: ours (``optimizers.lbfgs()``, strong Wolfe),
ours with optax's search keywords, ``optax.lbfgs()``, ``torch.optim.LBFGS(line_search_fn="strong_wolfe",
history_size=10)`` (one ``step`` with ``max_iter`` and ``max_eval`` large, ``tolerance_change=0``) and
``optimizers.torch_lbfgs`` with the same arguments. An evaluation is one value-and-gradient call (the
first, at the start, included).

    .venv/bin/python benchmarks/lbfgs_iterations.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import optimizers  # noqa: E402

TOL, MAX_ITER = 1e-6, 2000


def rosenbrock(w, lib=jnp):
    return lib.sum(100 * (w[1:] - w[:-1] ** 2) ** 2 + (1 - w[:-1]) ** 2)


def _logistic_problem():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    x = np.concatenate([x, np.ones((len(x), 1))], 1)  # bias column
    y = 2.0 * y - 1.0

    def loss(w, lib=jnp):
        xl, yl = (jnp.asarray(x), jnp.asarray(y)) if lib is jnp else (torch.tensor(x), torch.tensor(y))
        margins = yl * (xl @ w)
        soft = jnp.logaddexp(0.0, -margins) if lib is jnp else torch.nn.functional.softplus(-margins)
        return lib.mean(soft) + 0.5e-3 * lib.sum(w**2)

    return loss, np.zeros(x.shape[1])


def problems():
    logistic, w0 = _logistic_problem()
    start = lambda n: np.tile([-1.2, 1.0], n // 2)  # noqa: E731
    return {"Rosenbrock 2-D": (rosenbrock, start(2)), "Rosenbrock 100-D": (rosenbrock, start(100)),
            "logistic regression, breast cancer (31 weights)": (logistic, w0)}


def optax_like(tx, f, w0):
    """(iterations, evaluations) of an optax-style solver whose line search reports its evaluations."""
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(w, state):
        v, g = value_and_grad(w, state=state)
        u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        search = state[-1]
        return optax.apply_updates(w, u), state, search.info.num_linesearch_steps, jnp.max(jnp.abs(search.grad))

    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    evals = 1
    for k in range(1, MAX_ITER + 1):
        w, state, n, gmax = step(w, state)
        evals += int(n)
        if float(gmax) <= TOL:
            return k, evals
    return f">{MAX_ITER}", evals


def torch_counts(f, w0):
    torch.set_default_dtype(torch.float64)
    try:
        tw = torch.tensor(w0, requires_grad=True)
        opt = torch.optim.LBFGS([tw], max_iter=MAX_ITER, max_eval=10 * MAX_ITER, tolerance_grad=TOL,
                                tolerance_change=0.0, history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = f(tw, torch)
            loss.backward()
            return loss

        opt.step(closure)
        st = opt.state[tw]
        done = float(tw.grad.abs().max()) <= TOL if tw.grad is not None else False
        return st["n_iter"], st["func_evals"], done
    finally:
        torch.set_default_dtype(torch.float32)


def ours_torch_form(f, w0):
    _, st, _ = optimizers.torch_lbfgs(f, jnp.asarray(w0), max_iter=MAX_ITER, max_eval=10 * MAX_ITER,
                                      tolerance_grad=TOL, tolerance_change=0.0, history_size=10,
                                      line_search_fn="strong_wolfe")
    return st.n_iter, st.func_evals


def main():
    optax_search = dict(max_linesearch_steps=20, initial_guess_strategy="one", approx_dec_rtol=1e-6)
    rows = ["| problem | `lbfgs()` (strong Wolfe) | `lbfgs` + optax's search keywords | `optax.lbfgs()` | "
            "`torch.optim.LBFGS` | `torch_lbfgs` |", "| --- | --- | --- | --- | --- | --- |"]
    for name, (f, w0) in problems().items():
        ours = optax_like(optimizers.lbfgs(), f, w0)
        ours_ox = optax_like(optimizers.lbfgs(linesearch=optimizers.scale_by_zoom_linesearch(**optax_search)), f, w0)
        theirs = optax_like(optax.lbfgs(), f, w0)
        t_iter, t_evals, _ = torch_counts(f, w0)
        o_iter, o_evals = ours_torch_form(lambda w, f=f: f(w), w0)
        cell = lambda c: f"{c[0]} / {c[1]}"  # noqa: E731
        rows.append(f"| {name} | {cell(ours)} | {cell(ours_ox)} | {cell(theirs)} | {t_iter} / {t_evals} | "
                    f"{o_iter} / {o_evals} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
