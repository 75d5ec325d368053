"""A run records the machine it is made on, and a run resumed on another machine says so: the same
seed gives the same run on one machine only (an AMD EPYC and an Intel Xeon pre-train different IQL
agents from one seed, docs/troubleshooting.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cfdg_aug.experiments import runner
from cfdg_aug.experiments.runner import SMOKE_SET, host_info, parse_set, resolve_config, run_experiment

pytest.importorskip("d3rlpy")
pytest.importorskip("mujoco")

QUIET: dict[str, Any] = dict(progress=False, threads=1, share_pretrained=False)
OTHER_HOST = "started on another machine"


def _killed(*a: object, **k: object) -> None:
    raise KeyboardInterrupt  # after the offline checkpoint was committed: an unfinished run


def test_host_info_names_the_cpu_and_what_torch_dispatches_to() -> None:
    import torch

    info = host_info("cpu")
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["cpu_bf16"], bool)
    assert info["gpu"] is None
    assert info["torch_threads"] == torch.get_num_threads()
    if Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text()
        assert info["cpu_vendor"] and info["cpu_vendor"] in text
        assert info["cpu_model"] and info["cpu_model"] in text


def test_resuming_on_another_machine_warns_naming_what_differs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = resolve_config("iql", "none", "embedded", "small", 0, parse_set(list(SMOKE_SET)))
    monkeypatch.setattr(runner._Run, "_online", _killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, log=lambda *a: None, **QUIET)
    config_path = tmp_path / cfg.run_id() / "config.json"
    stored = json.loads(config_path.read_text())
    assert stored["host"] == host_info("cpu")  # threads included: run_experiment set 1 and left it

    # Resumed on the same machine: no warning.
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, log=lines.append, **QUIET)
    assert any("resuming" in line for line in lines)
    assert not [line for line in lines if OTHER_HOST in line]

    # Resumed where the CPU differs: one warning naming each field that differs, then and now.
    here = stored["host"]
    stored["host"] = {**here, "cpu_model": "Another CPU", "cpu_bf16": not here["cpu_bf16"]}
    config_path.write_text(json.dumps(stored))
    lines.clear()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, log=lines.append, **QUIET)
    [msg] = [line for line in lines if OTHER_HOST in line]
    assert msg.startswith(f"[cfdg-aug] warning: {cfg.run_id()} was started on another machine (")
    assert f"cpu_model: 'Another CPU' then, {here['cpu_model']!r} now" in msg
    assert f"cpu_bf16: {not here['cpu_bf16']!r} then, {here['cpu_bf16']!r} now" in msg
    assert "cpu_vendor" not in msg and "gpu" not in msg
