"""File helpers shared by the pipeline, the runner, the report, the demo and diagnostics: every
file is written to a temp file beside its destination, fsynced, then renamed over it, so a crash
leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Best effort: make a rename in ``folder`` durable across a power cut (the rename itself is
    already atomic; not every OS or filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e: OSError, path: str | os.PathLike[str], what: str = "") -> OSError:
    """``e`` as one sentence naming the destination ``path`` (not a temp file beside it):
    ``"cannot write <what> to <path>: <reason>"`` (``"cannot write <path>: ..."`` without ``what``),
    same ``OSError`` subclass and ``errno``, so callers that catch by type still do."""
    reason = e.strerror or str(e)
    other = os.fspath(e.filename) if isinstance(e.filename, (str, os.PathLike)) else None
    if other and other != os.fspath(path) and not other.endswith(".tmp"):
        reason += f" ({other})"
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        # "File exists" / "Not a directory" about a folder on the way: say which one is a file.
        for parent in Path(path).parents:
            if parent.exists():
                if not parent.is_dir():
                    reason = f"{parent} is a file, not a folder"
                break
    err = type(e)(f"cannot write {what + ' to ' if what else ''}{os.fspath(path)}: {reason}")
    err.errno = e.errno
    return err


def os_reason(e: OSError) -> str:
    """The OS's short reason for ``e`` (h5py puts a long text naming a temporary file in ``strerror``)."""
    if isinstance(e.errno, int) and e.errno > 0:
        return os.strerror(e.errno)
    return e.strerror or str(e) or type(e).__name__


def folder_write_problem(target: str | os.PathLike[str]) -> str | None:
    """None when the nearest existing folder at or above ``target`` accepts a new file, else why not,
    as the end of a sentence naming the setting ("X is a file, expected a folder", "cannot write in
    folder X (reason)"). Tried with a probe file removed at once, not guessed: root passes
    ``os.access`` everywhere and a read-only mount shows only on a write. Creates nothing."""
    anc = Path(target)
    try:
        while not (anc.exists() or anc.is_symlink()) and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            return f"{anc} is a file, expected a folder"
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".cfdg-aug-write-check.", suffix=".tmp")
    except OSError as e:  # a folder that cannot be written, or one on the way that cannot be searched
        return f"cannot write in folder {anc} ({os_reason(e)})"
    os.close(fd)
    os.unlink(probe)
    return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> None:
    """``write(fh)`` into ``path`` through a temp file beside it (fsynced, renamed over it, folder
    fsynced). The handle is opened ``"w+b"`` (h5py needs a readable one). An ``OSError`` keeps its
    type and names ``path``, not the temp file: ``"cannot write <path>: <reason>"``; the previous
    file, if any, is left as it was."""
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w+b") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise write_error(e, path) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` into ``path`` atomically (:func:`atomic_write_with`)."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default))


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with exactly ``columns`` (missing or None values as empty cells)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it (matplotlib is imported lazily)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
