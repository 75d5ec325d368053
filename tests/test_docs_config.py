from __future__ import annotations

import dataclasses

from cfdg_aug._docgen import field_docs, render
from cfdg_aug.config import CFDGConfig
from tests.conftest import REPO_ROOT


def test_every_config_field_is_documented() -> None:
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(CFDGConfig) if not docs.get(f.name)]
    assert not missing, f"CFDGConfig fields without a docstring: {missing}"


def test_config_reference_page_is_up_to_date() -> None:
    page = (REPO_ROOT / "docs" / "config.md").read_text()
    assert page == render(), "docs/config.md is stale: run `python -m cfdg_aug._docgen > docs/config.md`"
