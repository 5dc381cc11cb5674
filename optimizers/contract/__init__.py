"""The contract every rule keeps: pytree checks, hyperparameters, dtypes, layer_axes, shared moment helpers."""
