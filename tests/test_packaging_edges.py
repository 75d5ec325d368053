"""Packaging edges (issue 19): a core-only install says which extra to add, and the wheel ships py.typed.

Absence of an optional package is simulated with ``sys.modules[name] = None`` (``import name`` then
raises ImportError) in process, or with a meta-path blocker in a fresh interpreter for the
integration packages, whose submodules import their host library at the top.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug._optional import require
from tests.conftest import REPO_ROOT


def _hint(extra: str) -> str:
    return f'pip install "cfdg-aug[{extra}]"'


def _block(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


# --- the helper --------------------------------------------------------------------------------------
def test_require_returns_the_module() -> None:
    assert require("json", "mujoco") is json


def test_require_names_the_extra_and_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "stable_baselines3")
    with pytest.raises(ImportError) as ei:
        require("stable_baselines3", "sb3", what="the SB3 buffer")
    assert str(ei.value) == f"the SB3 buffer needs stable-baselines3: {_hint('sb3')}"
    assert ei.value.name == "stable_baselines3"


def test_require_shows_a_broken_dependency_of_an_installed_package(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfdg_fake_host.py").write_text("import cfdg_no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r'needs cfdg_fake_host: pip install "cfdg-aug\[d3rlpy\]" '
                                          r"\(cfdg_fake_host is installed but failed to import: .*cfdg_no_such_module_xyz"):
        require("cfdg_fake_host", "d3rlpy", what="x")


# --- datasets ----------------------------------------------------------------------------------------
def test_embedded_dataset_without_h5py_names_the_mujoco_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.datasets import load_dataset

    _block(monkeypatch, "h5py")
    with pytest.raises(ImportError) as ei:
        load_dataset("embedded")
    msg = str(ei.value)
    assert "h5py" in msg and _hint("mujoco") in msg and "\n" not in msg


def test_write_d4rl_without_h5py_names_the_mujoco_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.datasets import write_d4rl

    n = 4
    arrays = {"observations": np.zeros((n, 2), np.float32), "actions": np.zeros((n, 1), np.float32),
              "rewards": np.zeros(n, np.float32), "next_observations": np.zeros((n, 2), np.float32),
              "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    _block(monkeypatch, "h5py")
    with pytest.raises(ImportError, match=r'writing D4RL-layout hdf5 files needs h5py: pip install "cfdg-aug\[mujoco\]"'):
        write_d4rl(tmp_path / "x.hdf5", arrays)
    assert not list(tmp_path.iterdir())


def test_minari_without_minari_names_the_minari_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.datasets import load_dataset

    _block(monkeypatch, "minari")
    with pytest.raises(ImportError) as ei:
        load_dataset("minari:mujoco/hopper/medium-v0")
    assert str(ei.value) == f"reading or writing Minari datasets needs minari: {_hint('minari')}"


@pytest.mark.parametrize("missing", ["gymnasium", "mujoco"])
def test_make_env_without_gymnasium_or_mujoco_names_the_mujoco_extra(missing: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.datasets import make_env

    _block(monkeypatch, missing)
    with pytest.raises(ImportError) as ei:
        make_env("Hopper-v4")
    assert f"needs {missing}: {_hint('mujoco')}" in str(ei.value)


def test_make_dataset_cli_without_gymnasium_prints_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from cfdg_aug.datasets.make import main

    _block(monkeypatch, "gymnasium")
    rc = main(["--env", "Hopper-v4", "--out", str(tmp_path / "d.hdf5"), "--n-transitions", "5", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and _hint("mujoco") in err and "\n" not in err


# --- diagnostics ---------------------------------------------------------------------------------------
def test_plots_without_matplotlib_name_the_experiments_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.diagnostics import plot_marginals

    _block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(ImportError, match=r'plotting diagnostics needs matplotlib: pip install "cfdg-aug\[experiments\]"'):
        plot_marginals({"real": np.zeros((8, 2))}, tmp_path / "m.png")


def test_physics_check_without_mujoco_names_the_mujoco_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.diagnostics import physics as phys

    monkeypatch.setattr(phys, "physics_available", lambda: False)
    with pytest.raises(ImportError, match=r'needs mujoco and gymnasium: pip install "cfdg-aug\[mujoco\]"'):
        phys.noise_floor(np.zeros((4, 11)), "Hopper-v4")


def test_fidelity_progress_without_tqdm_runs_without_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from cfdg_aug.diagnostics import fidelity

    _block(monkeypatch, "tqdm", "tqdm.auto")
    assert list(fidelity._progress([0.0, 1.0], "sweep", True)) == [0.0, 1.0]


# --- integration packages (fresh interpreter, host library blocked) -----------------------------------
_BLOCKER = """
import importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
out = {}
for stmt in sys.argv[2:]:
    try:
        exec(stmt, {})
        out[stmt] = "ok"
    except BaseException as e:
        out[stmt] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def _run_blocked(blocked: list[str], statements: list[str]) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", _BLOCKER, ",".join(blocked), *statements], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_integrations_without_host_library_name_their_extra() -> None:
    out = _run_blocked(["d3rlpy", "stable_baselines3", "sb3_contrib"], [
        "import cfdg_aug.integrations.d3rlpy",
        "import cfdg_aug.integrations.sb3",
    ])
    assert out["import cfdg_aug.integrations.d3rlpy"] == (
        f"ImportError: cfdg_aug.integrations.d3rlpy needs d3rlpy: {_hint('d3rlpy')}")
    assert out["import cfdg_aug.integrations.sb3"] == (
        f"ImportError: cfdg_aug.integrations.sb3 needs stable-baselines3: {_hint('sb3')}")


_OPTIONAL = ["h5py", "gymnasium", "gym", "mujoco", "minari", "d3rlpy", "stable_baselines3", "sb3_contrib", "tqdm",
             "matplotlib", "typer", "yaml", "pandas", "rich", "rliable", "tensorboard", "ray"]


def test_core_only_install_imports_and_names_extras() -> None:
    """``pip install cfdg-aug`` alone: the core packages import; each optional path names its extra."""
    out = _run_blocked(_OPTIONAL, [
        "import cfdg_aug, cfdg_aug.buffer, cfdg_aug.datasets, cfdg_aug.diagnostics, cfdg_aug.integrations",
        "from cfdg_aug.datasets import load_dataset; load_dataset('embedded')",
        "from cfdg_aug.datasets import make_env; make_env('hopper-medium-v2')",
        "from cfdg_aug.datasets import load_minari; load_minari('mujoco/hopper/medium-v0')",
    ])
    stmts = list(out)
    assert out[stmts[0]] == "ok"
    assert out[stmts[1]] == ("ImportError: reading D4RL-layout hdf5 files (the embedded demo set included) "
                             f"needs h5py: {_hint('mujoco')}")
    assert out[stmts[2]] == f"ImportError: the environment 'hopper-medium-v2' needs gymnasium: {_hint('mujoco')}"
    assert out[stmts[3]] == f"ImportError: reading or writing Minari datasets needs minari: {_hint('minari')}"


# --- py.typed in the wheel -----------------------------------------------------------------------------
def test_py_typed_files_exist_and_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")

    assert (REPO_ROOT / "cfdg_aug" / "py.typed").is_file()
    assert (REPO_ROOT / "integrations" / "py.typed").is_file()
    pkg_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in pkg_data["cfdg_aug"]
    assert "py.typed" in pkg_data["cfdg_aug.integrations"]


def test_wheel_ships_py_typed(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    # setuptools >= 70.1 builds wheels itself (setuptools.command.bdist_wheel); older ones need `wheel`.
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None:
        pytest.importorskip("wheel")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("cfdg_aug", "integrations"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp_path / "dist").glob("cfdg_aug-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert "cfdg_aug/py.typed" in names
    assert "cfdg_aug/integrations/py.typed" in names
    assert "cfdg_aug/_optional.py" in names
    assert "cfdg_aug/datasets/data/hopper-medium-embedded.hdf5" in names
