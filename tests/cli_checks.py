"""Assertions shared by the CLI's bad-input tests: one ``error:`` line, nothing changed on disk."""

from __future__ import annotations

from pathlib import Path


def one_error_line(code: int, output: str) -> str:
    """The command was refused with exactly one ``error:`` line (no traceback, no warnings) and exit
    status 2; returns that line."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder): equal before and after a refused
    command means it created and changed nothing."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
