"""The step benchmark: ``python benchmarks/run.py`` (see its docstring) and its parts."""
