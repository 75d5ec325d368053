"""Overhead of CFDGReplayBuffer against SB3's ReplayBuffer, measured in the same run.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sb3 [--quick]

1. ``sample(256)`` time, same online contents (Hopper-v4 shapes, float64 observations as the env
   gives them): SB3 ``ReplayBuffer`` vs ours (a) before any offline data / refresh (delegates to
   SB3, expected ~1x) and (b) fully mixed: offline pool + online + both synthetic pools after a
   refresh (target <= 1.5x SB3).
2. SAC environment steps/s on Hopper-v4 with the plain buffer vs ours before the first refresh
   (target >= 0.95x); the two models train in alternating slices so both see the same machine load,
   and both wall-clock and process-CPU rates are reported.

Writes benchmarks/results/bench_sb3.json (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer

from cfdg_aug.config import CFDGConfig
from cfdg_aug.integrations.sb3 import CFDGReplayBuffer

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sb3.json"
OBS_DIM, ACT_DIM = 11, 3
TINY = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4,
                        synthetic_online_size=80_000, synthetic_offline_size=20_000, sample_batch_size=20_000,
                        refresh_every=10**9, min_online=10**9)


def _fill(buffers: list[ReplayBuffer], n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM))
    nxt = rng.normal(size=(n, OBS_DIM))
    act = rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32)
    rew = rng.normal(size=n).astype(np.float32)
    done = rng.random(n) < 0.01
    for i in range(n):
        for b in buffers:
            b.add(obs[i:i + 1], nxt[i:i + 1], act[i:i + 1], rew[i:i + 1], done[i:i + 1], [{}])


def _time_sample(buf: ReplayBuffer, batch: int, reps: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean seconds per ``sample(batch)`` call."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            buf.sample(batch)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def bench_sample(n: int, reps: int, rounds: int) -> dict[str, Any]:
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), dtype=np.float64)
    act_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), dtype=np.float32)
    plain = ReplayBuffer(n, obs_space, act_space, device="cpu")
    delegating = CFDGReplayBuffer(n, obs_space, act_space, device="cpu", config=TINY, seed=0)
    mixed = CFDGReplayBuffer(n, obs_space, act_space, device="cpu", config=TINY, seed=0)
    _fill([plain, delegating, mixed], n)
    rng = np.random.default_rng(1)
    m = n // 2
    mixed.add_offline({
        "observations": rng.normal(size=(m, OBS_DIM)), "actions": rng.uniform(-1, 1, (m, ACT_DIM)),
        "rewards": rng.normal(size=m), "next_observations": rng.normal(size=(m, OBS_DIM)),
        "terminals": rng.random(m) < 0.01,
    }, actions_scaled=True)
    mixed.refresh()  # a tiny generator: fills both synthetic pools so that all four sources are sampled
    assert delegating.delegates_to_parent and not mixed.delegates_to_parent
    counts = mixed.augmented.source_counts(256)
    order = [("sb3", plain), ("cfdg_delegating", delegating), ("cfdg_mixed", mixed)]
    res: dict[str, list[float]] = {k: [] for k, _ in order}
    for _ in range(3):  # interleave to share noise
        for k, b in order:
            res[k].append(_time_sample(b, 256, reps, rounds))
    t = {k: min(v) for k, v in res.items()}
    return {
        "transitions_online": n, "transitions_offline": m, "batch_size": 256, "source_counts_mixed": list(counts),
        "sb3_us": t["sb3"] * 1e6, "cfdg_delegating_us": t["cfdg_delegating"] * 1e6,
        "cfdg_mixed_us": t["cfdg_mixed"] * 1e6,
        "ratio_delegating": t["cfdg_delegating"] / t["sb3"], "ratio_mixed": t["cfdg_mixed"] / t["sb3"],
        "target_ratio_max": 1.5,
    }


def _sac(buffer_class: type, kwargs: dict[str, Any], buffer_size: int, seed: int) -> SAC:
    model = SAC("MlpPolicy", gym.make("Hopper-v4"), buffer_size=buffer_size, learning_starts=100, batch_size=256,
                seed=seed, device="cpu", replay_buffer_class=buffer_class, replay_buffer_kwargs=kwargs)
    model.learn(150)  # warm-up (env, first gradient steps) outside the timed part
    return model


def bench_sac(steps: int, chunk: int) -> dict[str, Any]:
    """SAC steps/s, plain vs ours, alternating ``chunk``-step slices of ``learn`` so that both see the
    same machine load (the CI machine is shared). Reports wall-clock and process-CPU rates; the CPU
    ratio is the one that load from other processes distorts least."""
    cfg = CFDGConfig.small(refresh_every=10**9, min_online=10**9)
    models = {"sb3": _sac(ReplayBuffer, {}, steps + 200, seed=0),
              "cfdg": _sac(CFDGReplayBuffer, {"config": cfg}, steps + 200, seed=0)}
    wall = {k: 0.0 for k in models}
    cpu = {k: 0.0 for k in models}
    done = 0
    while done < steps:
        k_steps = min(chunk, steps - done)
        for name, model in models.items():
            w0, c0 = time.perf_counter(), time.process_time()
            model.learn(k_steps, reset_num_timesteps=False)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
        done += k_steps
    buf = models["cfdg"].replay_buffer
    assert isinstance(buf, CFDGReplayBuffer) and buf.num_refreshes == 0 and buf.delegates_to_parent
    return {
        "steps_per_model": steps, "chunk": chunk,
        "sb3_steps_per_s_wall": steps / wall["sb3"], "cfdg_steps_per_s_wall": steps / wall["cfdg"],
        "sb3_steps_per_s_cpu": steps / cpu["sb3"], "cfdg_steps_per_s_cpu": steps / cpu["cfdg"],
        "ratio_wall": wall["sb3"] / wall["cfdg"], "ratio_cpu": cpu["sb3"] / cpu["cfdg"],
        "target_ratio_min": 0.95,
        "note": "before the first refresh, no offline data; default SAC networks (256x256), batch 256, "
                "learning_starts 100; models trained in alternating slices",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, noisier)")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    n, reps, rounds, steps, chunk = (20_000, 200, 3, 200, 50) if args.quick else (100_000, 1000, 5, 1500, 100)
    t0 = time.time()
    out = {
        "benchmark": "bench_sb3",
        "command": f"OMP_NUM_THREADS={threads} python -m benchmarks.bench_sb3{' --quick' if args.quick else ''}",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "sample": bench_sample(n, reps, rounds),
        "sac": bench_sac(steps, chunk),
    }
    out["sample_within_target"] = out["sample"]["ratio_mixed"] <= 1.5
    out["sac_within_target"] = out["sac"]["ratio_cpu"] >= 0.95
    out["seconds"] = time.time() - t0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, RESULTS)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
