"""torch_lbfgs against torch.optim.LBFGS: the same iterates, iterations and evaluations, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers


def _rosenbrock(w, lib):
    return lib.sum(100 * (w[1:] - w[:-1] ** 2) ** 2 + (1 - w[:-1]) ** 2)


def _quadratic(w, lib):
    return 0.5 * lib.sum(lib.arange(1, w.shape[0] + 1, dtype=w.dtype) * w**2) + lib.sum(w)


PROBLEMS = {"rosenbrock": (_rosenbrock, [-1.2, 1.0]), "quadratic": (_quadratic, [1.0, -2.0, 3.0, 0.5, 2.0])}


def _both(problem, dtype, steps, **kw):
    """Yields (ours, torch's) params, func_evals and n_iter after each step."""
    f, w0 = PROBLEMS[problem]
    w0 = np.asarray(w0, dtype)
    tw = torch.tensor(w0, requires_grad=True)
    ref = torch.optim.LBFGS([tw], **kw)

    def closure():
        ref.zero_grad()
        loss = f(tw, torch)
        loss.backward()
        return loss

    p, state = jnp.asarray(w0), None
    for _ in range(steps):
        ref.step(closure)
        p, state, _ = optimizers.torch_lbfgs(lambda w: f(w, jnp), p, state, **kw)
        theirs = ref.state[tw]
        yield (np.asarray(p), state.func_evals, state.n_iter), (tw.detach().numpy().copy(), theirs["func_evals"],
                                                                theirs["n_iter"])


CONFIGS = [dict(line_search_fn="strong_wolfe", max_iter=5, history_size=4),  # memory full, zooms and extrapolations
           dict(line_search_fn="strong_wolfe", max_iter=20, history_size=100, tolerance_grad=1e-5),
           dict(line_search_fn=None, lr=0.002, max_iter=4, history_size=3)]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_float64_iterates_and_counts_are_torch(problem, config):
    torch.set_default_dtype(torch.float64)
    try:
        with jax.enable_x64(True):
            for ours, theirs in _both(problem, np.float64, 6, **CONFIGS[config]):
                np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-9, atol=1e-12)
                assert ours[1:] == theirs[1:]
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("problem,steps", [("quadratic", 3), ("rosenbrock", 2)])
def test_float32_iterates_are_torch_within_roundoff(problem, steps):
    """float32: torch keeps some scalars as float32 tensors and some as Python floats; on Rosenbrock the
    roundoff grows along the valley, so only the first steps are compared (float64 above holds for all)."""
    for ours, theirs in _both(problem, np.float32, steps, **CONFIGS[0]):
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
        assert ours[1:] == theirs[1:]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="line_search_fn"):
        optimizers.torch_lbfgs(jnp.sum, jnp.ones(2), line_search_fn="wolfe")
    with pytest.raises(ValueError, match="history_size"):
        optimizers.torch_lbfgs(jnp.sum, jnp.ones(2), history_size=0)
