"""Optional dependencies: import one, or fail with one sentence naming the extra that installs it.

The core needs only torch, numpy, einops and safetensors. Everything else comes with an extra of
``pyproject.toml`` (``mujoco``: gymnasium, mujoco, h5py, tqdm; ``d3rlpy``; ``sb3``: stable-baselines3,
sb3-contrib; ``minari``; ``experiments``: matplotlib and the CLI's packages) and is imported through
:func:`require` where it is needed, so ``pip install cfdg-aug`` alone says what to add.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Distribution names where the import name differs (shown in the message).
_DISTRIBUTIONS: dict[str, str] = {
    "stable_baselines3": "stable-baselines3",
    "sb3_contrib": "sb3-contrib",
    "gymnasium_robotics": "gymnasium-robotics",
    "yaml": "pyyaml",
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``: ``pip install "cfdg-aug[extra]"``."""
    return f'pip install "cfdg-aug[{extra}]"'


def missing_extra(module: str, extra: str, what: str, cause: ImportError | None = None) -> ImportError:
    """The error :func:`require` raises (an ``ImportError`` whose ``name`` is ``module``), for callers
    that import by other means."""
    root = module.split(".")[0]
    dist = _DISTRIBUTIONS.get(root, root)
    msg = f"{what} needs {dist}: {install_hint(extra)}"
    # "No module named 'h5py'" for the package asked for adds nothing; any other import failure (a
    # dependency of the package missing, an incompatible version) is worth showing.
    if cause is not None:
        failed = cause.name or ""
        if not (isinstance(cause, ModuleNotFoundError) and failed.split(".")[0] == root):
            msg += f" ({dist} is installed but failed to import: {cause})"
    return ImportError(msg, name=module)


def require(module: str, extra: str, *, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise one ``ImportError`` sentence naming ``extra``.

    ``what`` names the feature that needs it (default: the module), e.g.
    ``require("h5py", "mujoco", what="reading D4RL hdf5 files")`` raises
    ``reading D4RL hdf5 files needs h5py: pip install "cfdg-aug[mujoco]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_extra(module, extra, what or module, e) from None


__all__ = ["install_hint", "missing_extra", "require"]
