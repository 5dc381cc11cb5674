"""Layer-wise rules: trust ratios (LARS, LAMB) and NovoGrad."""
