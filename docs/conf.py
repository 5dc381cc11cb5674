"""Sphinx configuration: autodoc + napoleon for the docstrings, MyST for the Markdown pages.

Math is rendered by MathJax 3 copied into the built site (``sphinx-mathjax-offline``), so the
pages need no network. The API pages are written at build time by ``_ext/apipages.py`` from the
packages' ``__all__``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent / "_ext")]

project = "optimizers & schedules for JAX"
author = "the optimizers authors"
copyright = "the optimizers authors, Apache-2.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from _static/mathjax, not from a CDN
    "myst_parser",
    "apipages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]
root_doc = "index"

# Markdown: $...$ and $$...$$ math, ::: fences, {ref} and {doc} roles, header anchors.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # dataclass attributes listed once, not as duplicate objects
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_type_aliases = {
    "ScalarOrSchedule": "schedules.ScalarOrSchedule",
    "Schedule": "schedules.Schedule",
}
autodoc_default_options = {"undoc-members": False}
python_use_unqualified_type_names = True
maximum_signature_line_length = 88  # one parameter a line for long signatures

# A reference to one of our names that does not resolve fails the build (-W); references to
# other libraries' names (no intersphinx offline) and to typing constructs are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(optax|jax|jnp|np|numpy|flax|nnx|torch|orbax|typing|collections|chex|pathlib)(\..*)?"),
    # Names in signatures: type variables and private aliases (EtaOrFn, T, ...).
    (r"py:class", r"[A-Z]\w*|(optimizers|schedules)\.(\w+\.)+[A-Z]\w*"),
    (r"py:.*", r"(Array|ArrayTree|PyTree|Params|Updates|OptState|NamedSharding|Mesh|Sharding"
               r"|PartitionSpec|Path|T|Iterator|Iterable|Callable|Sequence|Any|Optional|Union"
               r"|Mapping|NamedTuple|MaskOrFn|float|int|bool|str|bytes|dict|list|tuple|None)"),
]

html_theme = "furo"
html_title = "optimizers & schedules"
html_static_path = []
