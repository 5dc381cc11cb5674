"""Quasi-Newton rules: L-BFGS and the line searches that set its step."""
