"""The API reference: every public name of both packages has a generated page."""

import importlib
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
apipages = importlib.import_module("apipages")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return apipages.write_pages(tmp_path_factory.mktemp("api"))


@pytest.mark.parametrize("package", apipages.PACKAGES)
def test_every_public_name_has_a_page(pages, package):
    for name in importlib.import_module(package).__all__:
        page = pages[f"{package}.{name}"]
        assert f":: {package}.{name}\n" in page.read_text(), (name, page)


def test_every_page_is_in_a_group(pages):
    groups = {p.name for p in next(iter(pages.values())).parent.glob("group.*.rst")}
    listed = "".join((next(iter(pages.values())).parent / g).read_text() for g in groups)
    for page in set(pages.values()):
        assert f"\n   {page.stem}\n" in listed, page.stem


@pytest.mark.parametrize("name, group", [
    ("lamb", "optimizers"), ("scale_by_adam", "transforms"), ("trace", "transforms"),
    ("scale_by_learning_rate", "transforms"), ("lookahead", "wrappers"), ("ema", "wrappers"),
    ("adagrad", "optimizers"), ("forward_value_and_grad", "estimators"),
    ("gradientless_descent", "estimators"), ("save", "tools"), ("get_hyperparams", "tools"),
])
def test_groups_follow_the_rules(name, group):
    import optimizers

    assert apipages.classify("optimizers", name, getattr(optimizers, name)) == group


def test_a_new_name_gets_a_page(monkeypatch, tmp_path):
    import optimizers

    def scale_by_novelty() -> "optax.GradientTransformation":
        """A transform no one has documented yet."""

    class NoveltyThing:
        """An export no rule knows."""

    monkeypatch.setattr(optimizers, "scale_by_novelty", scale_by_novelty, raising=False)
    monkeypatch.setattr(optimizers, "NoveltyThing", NoveltyThing, raising=False)
    monkeypatch.setattr(optimizers, "__all__", optimizers.__all__ + ["NoveltyThing", "scale_by_novelty"])
    pages = apipages.write_pages(tmp_path)
    assert pages["optimizers.scale_by_novelty"].name == "optimizers.scale_by_novelty.rst"
    assert "optimizers.NoveltyThing" in (tmp_path / "group.other.rst").read_text()
    assert "optimizers.scale_by_novelty" in (tmp_path / "group.transforms.rst").read_text()


def _table_rows(text: str) -> dict:
    """``name -> cells`` of every Markdown table row whose first cell is a code name."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("| `") else []
        if cells and cells[0].startswith("`") and cells[0].endswith("`"):
            rows.setdefault(cells[0].strip("`"), cells[1:])
    return rows


def test_readme_table_is_the_declarations():
    """The README's optimizer table holds each declared optimizer's update and paper, and no other row."""
    from optimizers.contract.registry import declared_optimizers

    text = (DOCS.parent / "README.md").read_text()
    table = text[text.index("## Optimizers"):text.index("**Wrappers**")]
    rows = _table_rows(table)
    want = {n: [d.update, d.paper] for n, d in declared_optimizers().items() if d.update}
    assert rows == want


def test_docs_tables_list_every_declared_optimizer():
    """``docs/optimizers.md``'s two tables (defaults and state; against optax and PyTorch) have a row each."""
    from optimizers.contract.registry import declared_optimizers

    text = (DOCS / "optimizers.md").read_text()
    split = text.index("## Against optax and PyTorch")
    for part in (text[:split], text[split:]):
        assert set(_table_rows(part)) >= {n for n, d in declared_optimizers().items() if d.update}


def test_docs_say_which_optimizers_take_fused():
    """``docs/optimizers.md``'s two lists, "also take ``fused=True``" and "have no kernel", are the
    declared optimizers with and without a ``fused`` keyword."""
    import inspect
    import re

    from optimizers.contract.registry import declared_optimizers

    text = (DOCS / "optimizers.md").read_text()
    start = text.index("also take `fused=True`")
    fused_part = text[text.rindex("\n\n", 0, start):start]
    kernel_less = text[text.index("(see {doc}`guides/fused_kernels`).", start):text.index("have no kernel", start)]
    names = lambda part: set(re.findall(r"`([a-z_0-9]+)`", part))  # noqa: E731
    declared = {n: "fused" in inspect.signature(d.build).parameters for n, d in declared_optimizers().items()
                if d.update}
    assert names(fused_part) == {n for n, f in declared.items() if f}
    assert names(kernel_less) == {n for n, f in declared.items() if not f}
