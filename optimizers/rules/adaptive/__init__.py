"""Adaptive per-coordinate rules: the Adam family, AdaGrad, RMSProp, Adadelta, AdaX, Amos."""
