"""Resume after SIGKILL: the rerun continues from the last checkpoint; no gap, no duplicate rows."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfdg_aug.experiments.runner import METRIC_COLUMNS, SMOKE_SET, parse_set, resolve_config
from cfdg_aug.transitions import SOURCE_NAMES

TINY_SET = list(SMOKE_SET)


def _set_args(items: list[str]) -> list[str]:
    return [a for it in items for a in ("--set", it)]


def _cmd(out: Path, extra: list[str], algo: str = "iql") -> list[str]:
    return [sys.executable, "-m", "cfdg_aug.experiments", "run", "--algo", algo, "--augmentation", "cfdg",
            "--dataset", "embedded", "--seed", "1", "--out", str(out), "--no-progress", "--threads", "1",
            *_set_args([*TINY_SET, *extra])]


# The background-refresh case is `slow` (about a minute): make test stays under its 10 minutes.
@pytest.mark.parametrize(("algo", "refresh_lag"),
                         [("iql", 0), ("apl", 0), pytest.param("iql", 50, marks=pytest.mark.slow)])
def test_sigkill_after_first_online_checkpoint_then_rerun_resumes_without_gap_or_duplicate(
    tmp_path: Path, algo: str, refresh_lag: int
) -> None:
    # APL steps are ~4x IQL's: 300 online steps (two refreshes after the kill at 100) keep its case short.
    online_steps = 300 if algo == "apl" else 500
    extra = [f"online_steps={online_steps}", "eval_every=100", "checkpoint_every=100"]
    if algo == "apl":  # both branches run after the checkpoint: its FIFO and branch RNG are restored
        extra += ["algo.greedy_min_online=50"]
    if refresh_lag:  # refreshes start at 100, 200, ... in a background process, installed at 150, 250, ...;
        extra += [f"cfdg.refresh_lag={refresh_lag}"]  # a checkpoint due meanwhile waits until the fit is done
    cfg = resolve_config(algo, "cfdg", "embedded", "small", 1, parse_set([*TINY_SET, *extra]))
    rd = tmp_path / cfg.run_id()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(tmp_path, extra, algo), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = rd / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if latest.exists():
            info = json.loads(latest.read_text())
            if info["phase"] == "online":
                killed_at = info["step"]
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "the run never wrote an online checkpoint before finishing"
    assert proc.returncode == -signal.SIGKILL
    assert not (rd / "result.json").exists()

    res = subprocess.run(_cmd(tmp_path, extra, algo), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming" in res.stdout and "ckpt-online-" in res.stdout
    rows = list(csv.DictReader(open(rd / "metrics.csv")))
    evals = [int(r["online_step"]) for r in rows if r["phase"] in ("offline", "online")]
    assert evals == list(range(0, online_steps + 1, 100))  # every evaluation exactly once, in order
    refresh_steps = [int(r["online_step"]) for r in rows if r["phase"] == "refresh"]
    assert refresh_steps == sorted(set(refresh_steps)) and len(refresh_steps) >= online_steps // 100 - 2
    assert refresh_steps[-1] > killed_at  # the resumed run went on refreshing
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    assert (rd / "result.json").exists()

    # The resumed run is the run: the same scores and trained-on rows as one never interrupted.
    whole = tmp_path / "whole"
    res = subprocess.run(_cmd(whole, extra, algo), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # The learner diagnostics too: the loss window is checkpointed, the critic probe draws nothing.
    columns = ["phase", "online_step", "normalized_score", *(f"src_{n}" for n in SOURCE_NAMES),
               "eval_length_mean", *(c for c in METRIC_COLUMNS if c.startswith(("loss_", "probe_")))]
    again = list(csv.DictReader(open(whole / cfg.run_id() / "metrics.csv")))
    assert [[r[c] for c in columns] for r in rows] == [[r[c] for c in columns] for r in again]
