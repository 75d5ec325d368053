"""examples/sb3_hopper.py runs end to end with a tiny budget (offline prefill, pre-training, online SAC)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from cfdg_aug.generator import CFDGGenerator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sb3_hopper.py"


def test_sb3_hopper_example_runs_tiny_budget(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("sb3_hopper_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main([
        "--online-steps", "120", "--pretrain-steps", "20", "--refresh-every", "50", "--tiny", "--batch-size", "32",
        "--eval-episodes", "1", "--offline-limit", "1000", "--out", str(tmp_path),
    ])
    assert summary["offline_transitions"] == 1000
    assert summary["refresh_online_counts"] == [50, 100]
    assert summary["pool_sizes"]["real_online"] == 120 and summary["pool_sizes"]["synthetic_online"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "sac_cfdg_final.zip").exists() and (tmp_path / "sac_cfdg_final_replay_buffer.pkl").exists()
    gen = CFDGGenerator.load(tmp_path / "sac_cfdg_final_generator.safetensors")
    assert gen.is_fitted and gen.num_fits == 2
    assert (tmp_path / "sac_cfdg_cfdg_generator_120_steps.safetensors").exists()
