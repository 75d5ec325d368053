"""Generate docs/config.md from the field docstrings of :class:`CFDGConfig`.

    python -m cfdg_aug._docgen > docs/config.md

Python keeps no docstrings for dataclass fields at run time, so they are read from the source with
``ast`` (the string literal right after each annotated field).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from cfdg_aug.config import CFDGConfig


def field_docs(cls: type = CFDGConfig) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` of the ``Attributes:`` section of a Google-style class docstring (one entry
    per ``name: text`` line, its more indented lines joined to it)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    if "Attributes:" not in lines:
        return docs
    name, indent = None, None
    for line in lines[lines.index("Attributes:") + 1:]:
        if not line.strip():
            continue
        if not line.startswith(" "):  # the next section
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        head, sep, text = line.strip().partition(": ")
        if depth == indent:
            if not (sep and head.isidentifier()):  # would silently join the previous entry
                raise ValueError(f"{cls.__name__}: unparsable Attributes line {line.strip()!r}: "
                                 f"expected 'name: text'")
            name, docs[head] = head, text
        elif name is not None:
            docs[name] += " " + line.strip()
    return docs


def render() -> str:
    docs = field_docs()
    paper, small = CFDGConfig.paper(), CFDGConfig.small()
    lines = [
        "# CFDGConfig reference",
        "",
        "Generated from the field docstrings in `cfdg_aug/config.py` by `python -m cfdg_aug._docgen > docs/config.md`",
        "(a test fails when this page is out of date). `paper` = `CFDGConfig.paper()`, `small` = `CFDGConfig.small()`.",
        "",
        "| field | paper | small | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(CFDGConfig):
        p, s = getattr(paper, f.name), getattr(small, f.name)
        doc = docs.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{p!r}` | `{s!r}`{' **' if p != s else ''} | {doc} |".replace("`** ", "` ** "))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
