"""Writes one API reference page per public name of ``optimizers`` and ``schedules``.

The names come from each package's ``__all__`` when the docs are built, so a new export gets a
page without anyone editing the docs. Each name is put into a group by a rule
(:func:`classify`), never by a list of names:

* a ``...State`` class goes on the page of the transform it belongs to (``ScaleByAdamState`` ->
  ``scale_by_adam``), and a class that a public function returns goes on that function's page
  (``LRFinderResult`` -> ``lr_finder``);
* building blocks are named for what they do to the updates: ``scale_by_*``, ``add_*``,
  ``clip_by_*`` and ``trace`` (optax's momentum) are **transforms**;
* any other function returning a ``GradientTransformation`` is an **optimizer** when it takes a
  ``learning_rate``, else a **wrapper** (it wraps or follows an optimizer in a chain);
* a name with the word ``grad`` or starting ``gradient`` (``forward_value_and_grad``,
  ``gradientless_descent``) is a **gradient estimator**;
* in ``schedules``, what returns a ``Schedule`` and the schedule types are **schedules**;
* any other function is a **tool**; whatever is left gets a page under **other**.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

PACKAGES = ("optimizers", "schedules")
GROUPS = {  # title and one line, in the order the index shows them
    "optimizers": ("Optimizers", "Named optimizers: a chain of transforms ending in the learning rate."),
    "transforms": ("Transforms", "Building blocks for ``optax.chain``, each with its state."),
    "wrappers": ("Wrappers", "Transforms that wrap or follow an optimizer: averaging, lookahead, "
                             "plateaus, skipped steps, state dtypes."),
    "estimators": ("Gradient estimators", "Gradients without backpropagation, to feed any optimizer."),
    "schedules": ("Schedules", "Pure functions ``step -> value`` for any hyperparameter."),
    "tools": ("Tools", "Hyperparameters, checkpoints, sharding, the LR finder, fused steps, input pipelines."),
    "other": ("Other", "Public names no rule above places."),
}
_TRANSFORM = re.compile(r"^(scale_by_|add_|clip_by_)|^trace$")
_ESTIMATOR = re.compile(r"(^|_)grad($|_)|^gradient")
_FIELD = re.compile(r"^\s+(\w+)\s*:\s*([^#=]+?)\s*(?:=[^#]*)?#\s*(.+)$")


def snake(name: str) -> str:
    """``ScaleByAdam`` -> ``scale_by_adam``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _returns(obj) -> str:
    ann = getattr(obj, "__annotations__", {}).get("return", "")
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def _params(obj) -> list[str]:
    try:
        return list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return []


def classify(package: str, name: str, obj) -> str:
    """The group of one public name (see the module docstring for the rules)."""
    if package == "schedules":
        if _returns(obj) == "Schedule" or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            return "schedules"
        return "tools" if callable(obj) else "other"
    if _ESTIMATOR.search(name):
        return "estimators"
    if inspect.isfunction(obj):
        if _TRANSFORM.search(name):
            return "transforms"
        if "GradientTransformation" in _returns(obj):
            return "optimizers" if "learning_rate" in _params(obj) else "wrappers"
        return "tools"
    return "other"


def owner(package: str, name: str, obj, names: set[str]) -> str | None:
    """The public function whose page also documents the class ``name``, if any."""
    if not inspect.isclass(obj):
        return None
    if name.endswith("State") and snake(name[: -len("State")]) in names:
        return snake(name[: -len("State")])
    mod = importlib.import_module(package)
    for other in sorted(names):
        if inspect.isfunction(getattr(mod, other)) and _returns(getattr(mod, other)) == name:
            return other
    return None


def summary(obj) -> str:
    """The first sentence of a docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        doc = ""  # a NamedTuple's generated docstring
    return " ".join(doc.split("\n\n")[0].split())


def state_fields(cls) -> list[tuple[str, str, str]]:
    """``(field, type, comment)`` of a NamedTuple written ``field: type  # comment``."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return []
    return [m.groups() for m in map(_FIELD.match, src.splitlines()) if m]


def _directive(package: str, name: str, obj) -> str:
    target = f"{package}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {target}\n   :members:\n   :exclude-members: count, index\n"
    if inspect.isfunction(obj):
        return f".. autofunction:: {target}\n"
    return f".. autodata:: {target}\n   :no-value:\n"


def collect() -> list[dict]:
    """One entry per public name: package, name, object, group and the page it lives on."""
    entries = []
    for package in PACKAGES:
        mod = importlib.import_module(package)
        names = set(mod.__all__)
        for name in mod.__all__:
            obj = getattr(mod, name)
            host = owner(package, name, obj, names)
            page_of = host or name
            group = classify(package, page_of, getattr(mod, page_of))
            entries.append(dict(package=package, name=name, obj=obj, group=group,
                                page=f"{package}.{page_of}", host=host))
    return entries


def write_pages(outdir: str | Path) -> dict[str, Path]:
    """Writes ``outdir/<package>.<name>.rst`` per page, a page per group and ``outdir/index.rst``.

    Returns ``{"package.name": page path}`` for every public name (classes that live on their
    transform's page map to that page). Files whose text is unchanged are not rewritten, so
    Sphinx does not rebuild them.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    entries = collect()
    pages: dict[str, list[dict]] = {}
    for e in entries:
        pages.setdefault(e["page"], []).append(e)
    written = {}
    names = [e["name"] for e in entries if e["host"] is None]
    for page, members in pages.items():
        main = next(m for m in members if m["host"] is None)
        title = main["name"] if names.count(main["name"]) == 1 else page  # package only if needed
        body = [title, "=" * len(title), "", f".. currentmodule:: {main['package']}", ""]
        for m in sorted(members, key=lambda m: m["host"] is not None):
            body.append(_directive(m["package"], m["name"], m["obj"]))
        path = outdir / f"{page}.rst"
        _write(path, "\n".join(body))
        for m in members:
            written[f"{m['package']}.{m['name']}"] = path
    groups = []
    for group in GROUPS:
        text = _group_page(group, entries)
        if text:
            groups.append(group)
            _write(outdir / f"group.{group}.rst", text)
    _write(outdir / "index.rst", _index(groups))
    keep = set(written.values()) | {outdir / "index.rst"} | {outdir / f"group.{g}.rst" for g in groups}
    for stale in set(outdir.glob("*.rst")) - keep:
        stale.unlink()
    return written


def _group_page(group: str, entries: list[dict]) -> str | None:
    """A group's page: a table of its names with their first sentences, and their pages."""
    title, blurb = GROUPS[group]
    mains = sorted((e for e in entries if e["group"] == group and e["host"] is None),
                   key=lambda e: (e["package"], e["name"].lower()))
    if not mains:
        return None
    lines = [title, "=" * len(title), "", blurb, "", ".. list-table::", "   :widths: 30 70", ""]
    for e in mains:
        pkg = e["package"]
        extra = [x["name"] for x in entries if x["page"] == e["page"] and x["host"]]
        role = "class" if inspect.isclass(e["obj"]) else "func" if callable(e["obj"]) else "data"
        also = ", ".join(f":class:`~{pkg}.{x}`" for x in extra)
        also = f" (with {also})" if extra else ""
        text = _qualify(summary(e["obj"]), pkg).replace("|", "\\|") or "\\"
        lines += [f"   * - :{role}:`~{pkg}.{e['name']}`", f"     - {text}{also}"]
    lines += ["", ".. toctree::", "   :hidden:", ""] + [f"   {e['page']}" for e in mains] + [""]
    return "\n".join(lines)


def _index(groups: list[str]) -> str:
    lines = ["API reference", "=============", "",
             "Every public name of ``optimizers`` and ``schedules``, one page each (a state class",
             "on the page of its transform), generated from the packages' ``__all__`` when the",
             "documentation is built.", "", ".. toctree::", "   :maxdepth: 1", ""]
    return "\n".join(lines + [f"   group.{g}" for g in groups] + [""])


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _state_docstring(app, what, name, obj, options, lines):
    """A NamedTuple state gets its fields from the source's comments, not 'Alias for field 0'."""
    if what != "class" or not name.endswith("State") or not issubclass(obj, tuple):
        return
    if lines and obj.__doc__ and obj.__doc__.startswith(obj.__name__ + "("):
        lines.clear()
    transform = snake(obj.__name__[: -len("State")])
    if not lines:
        lines += [f"The state of :func:`{transform}`.", ""]
    for field, typ, comment in state_fields(obj):
        lines.append(f"* ``{field}`` (``{typ}``): {_escape(comment)}")
    lines.append("")


def _escape(text: str) -> str:
    """A source comment as plain reStructuredText text (no markup, no references)."""
    return re.sub(r"([\\`*_|<>\[\]])", r"\\\1", text)


def _skip_fields(app, what, name, obj, skip, options):
    """Hide the ``Alias for field number N`` members of NamedTuple states."""
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


_PRIVATE = re.compile(r"^~?(optimizers|schedules)\.(?:_?[a-z]\w*\.)+(\w+)$")


def _public_alias(app, env, node, contnode):
    """Resolves a module path (``optimizers.rules.adaptive.adam.adam``, ``schedules._cosine.cosine``) to
    the public ``optimizers.name``."""
    m = _PRIVATE.match(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or not m:
        return None
    package, name = m.groups()
    if name not in importlib.import_module(package).__all__:
        return None
    return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                             f"{package}.{name}", node, contnode)


def _qualify(text: str, package: str) -> str:
    """``:func:`name``` in a summary shown outside its module -> ``:func:`~package.name```."""
    return re.sub(r":(func|class|data|obj):`~?([A-Za-z_]\w*)`", rf":\1:`~{package}.\2`", text)


def setup(app):
    here = Path(app.srcdir)
    app.connect("builder-inited", lambda app: write_pages(here / "api"))
    app.connect("autodoc-process-docstring", _state_docstring)
    app.connect("autodoc-skip-member", _skip_fields)
    app.connect("missing-reference", _public_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
