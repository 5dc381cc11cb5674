"""The Python blocks of docs/guides/lbfgs_and_line_search.md run, in order, in one namespace."""

import pathlib
import re

GUIDE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "guides" / "lbfgs_and_line_search.md"


def test_the_guide_runs():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 3
    namespace = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102
    assert namespace["state"].n_iter >= 1
