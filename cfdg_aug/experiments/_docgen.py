"""Generate docs/run_settings.md from :class:`~cfdg_aug.experiments.runner.ExperimentConfig`.

    python -m cfdg_aug.experiments._docgen > docs/run_settings.md

One row per run setting (a ``--set KEY=VALUE`` of ``cfdg-aug run``, a grid's ``set``): its value in
each profile and algorithm, as :func:`~cfdg_aug.experiments.runner.resolve_config` resolves it, and
the setting's entry in the class docstring.
"""

from __future__ import annotations

import dataclasses
import re

from cfdg_aug._docgen import docstring_attributes
from cfdg_aug.experiments.runner import ALGOS, PROFILE_BUDGETS, ExperimentConfig, resolve_config

#: Settings with their own command-line argument: the row says so instead of a value.
_ARGUMENTS = {"algo": "--algo", "augmentation": "--augmentation", "dataset": "--dataset",
              "profile": "--profile", "seed": "--seed"}


def _by_algo(values: dict[str, object]) -> str:
    """``x`` when every algorithm has it, else ``iql, pex: x; apl: y`` (algorithms grouped by value)."""
    groups: dict[str, list[str]] = {}
    for algo, v in values.items():
        groups.setdefault(f"`{v!r}`", []).append(algo)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(algos)}: {v}" for v, algos in groups.items())


def _markdown(text: str) -> str:
    """The docstring's reST inline markup as markdown: ``x`` becomes `x`, :func:`~a.b.f` `f` and
    :meth:`~a.B.m` `B.m` (the class kept for context)."""
    def role(m: re.Match) -> str:
        kind, short, target = m.groups()
        keep = 2 if kind == "meth" else 1
        return f"`{'.'.join(target.split('.')[-keep:]) if short else target}`"

    return re.sub(r":(\w+):`(~?)([^`]+)`", role, text).replace("``", "`")


def render() -> str:
    docs = docstring_attributes(ExperimentConfig)
    resolved = {(profile, algo): resolve_config(algo, "cfdg", "embedded", profile, 0)
                for profile in PROFILE_BUDGETS for algo in ALGOS}
    lines = [
        "# Run settings reference",
        "",
        "Generated from the docstring of `ExperimentConfig` in `cfdg_aug/experiments/runner.py` by",
        "`python -m cfdg_aug.experiments._docgen > docs/run_settings.md` (a test fails when this page is out",
        "of date). Each is a `--set KEY=VALUE` of `cfdg-aug run` or a key of a grid's `set`",
        "([experiments.md](experiments.md)); `cfdg.FIELD` and `algo.FIELD` set one field of the generator",
        "([config.md](config.md)) or of the algorithm's config. The values are each profile's, per",
        "algorithm (`--algo`); `cfdg` and `algo_kwargs` list only the fields a profile sets.",
        "",
        "| setting | small | paper | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in _ARGUMENTS:
            small = paper = f"`{_ARGUMENTS[f.name]}`"
        else:
            small, paper = (_by_algo({algo: getattr(resolved[(profile, algo)], f.name) for algo in ALGOS})
                            for profile in ("small", "paper"))
        cells = [c.replace("|", "\\|") for c in (small, paper, _markdown(docs.get(f.name, "")))]
        lines.append(f"| `{f.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
