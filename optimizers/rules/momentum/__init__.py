"""Momentum and sign rules: SGD, Lion, Rprop, funnelled SGDM, the EMA of updates."""
