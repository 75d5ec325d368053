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


def test_every_run_setting_is_documented() -> None:
    from cfdg_aug._docgen import docstring_attributes
    from cfdg_aug.experiments.runner import ExperimentConfig

    docs = docstring_attributes(ExperimentConfig)
    fields = [f.name for f in dataclasses.fields(ExperimentConfig)]
    assert [f for f in fields if not docs.get(f)] == [], "ExperimentConfig settings without an Attributes entry"
    assert set(docs) <= set(fields), f"Attributes entries naming no setting: {sorted(set(docs) - set(fields))}"


def test_run_settings_page_is_up_to_date() -> None:
    from cfdg_aug.experiments._docgen import render as render_run_settings

    page = (REPO_ROOT / "docs" / "run_settings.md").read_text()
    assert page == render_run_settings(), \
        "docs/run_settings.md is stale: run `python -m cfdg_aug.experiments._docgen > docs/run_settings.md`"


def test_run_settings_page_shows_each_profiles_values() -> None:
    from cfdg_aug.experiments._docgen import render as render_run_settings

    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in render_run_settings().splitlines()
            if line.startswith("| `")}
    assert rows["updates_per_step"][1:3] == ["iql, pex, sac: `1`; apl: `2`", "iql, pex, sac: `1`; apl: `10`"]
    assert rows["seed"][1:3] == ["`--seed`", "`--seed`"]
    assert rows["prefit_generator"][1:3] == ["`False`", "`False`"]


def test_an_attributes_line_that_names_no_setting_is_refused_not_joined_to_the_previous_one() -> None:
    import pytest

    from cfdg_aug._docgen import docstring_attributes

    class Two:
        """Settings.

        Attributes:
            first: one thing,
                over two lines.
            eval_every / eval_episodes: two settings in one entry.
        """

    with pytest.raises(ValueError, match="unparsable Attributes line 'eval_every / eval_episodes"):
        docstring_attributes(Two)
    Two.__doc__ = Two.__doc__.replace("eval_every / eval_episodes", "second")
    assert docstring_attributes(Two) == {"first": "one thing, over two lines.", "second": "two settings in one entry."}
