"""The fused CPU backend (fused=True): the glue and the C++ kernels."""
