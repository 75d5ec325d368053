"""Every ```python block in README.md and docs/*.md runs, except blocks whose first line is
``# illustrative`` (fragments, or full runs whose tested version is a script in examples/)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for i, m in enumerate(BLOCK.finditer(page.read_text())):
            code = m.group(1)
            if not code.lstrip().startswith("# illustrative"):
                out.append((page.relative_to(REPO_ROOT).as_posix(), i, code))
    return out


def test_there_are_runnable_doc_examples() -> None:
    assert {p for p, _, _ in _blocks()} >= {"README.md", "docs/datasets.md", "docs/fidelity.md"}


@pytest.mark.parametrize(("page", "index", "code"), _blocks(), ids=lambda v: v if isinstance(v, (str, int)) else "")
def test_doc_example_runs(page: str, index: int, code: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write files
    try:
        exec(compile(code, f"{page}[block {index}]", "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)
