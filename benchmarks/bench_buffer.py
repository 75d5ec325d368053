"""Replay-buffer sampling speed and memory: AugmentedReplayBuffer vs d3rlpy and SB3.

    python -m benchmarks.bench_buffer [--n 1000000] [--calls 2000]

All three buffers hold the same N hopper-sized transitions (obs 11, act 3), built in the same run:
- d3rlpy 2.8.1 ``ReplayBuffer(InfiniteBuffer(), episodes=...)`` with N / 1000 episodes of 1000
  steps (built directly: appending 1M transitions one by one takes minutes), timed on
  ``sample_transition_batch(256)``;
- stable-baselines3 ``ReplayBuffer(N, ...)`` with its arrays filled directly, timed on
  ``sample(256)`` (which returns torch tensors);
- ours in three states: (a) ``augmentation="none"`` with the N transitions split half offline, half
  online (a 1:1 two-pool mix), (b) ``"cfdg"`` with the same real pools plus synthetic pools of
  paper size (200K offline-like + 800K online-like, filled by a stub generator that copies rows,
  so the four-pool mix of a real run is what is timed), (c) like (b) plus the conversion of every
  field to torch tensors (what an SB3 integration does), the like-for-like comparison with SB3.

Timing: median over interleaved rounds (this machine is shared and noisy) of the mean per-call time
within a round. Targets: ours / d3rlpy <= 1.0, ours / SB3 <= 1.5. Memory: bytes held by the buffer
per stored transition vs raw float32 bytes of (s, a, r, s', done); target <= 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_result
from cfdg_aug.buffer import AugmentedReplayBuffer
from cfdg_aug.config import CFDGConfig
from cfdg_aug.transitions import TransitionBatch

OBS, ACT = 11, 3
BATCH = 256
RAW_BYTES = (2 * OBS + ACT + 2) * 4


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, OBS), dtype=np.float32)
    return {"obs": obs, "act": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
            "rew": rng.standard_normal(n, dtype=np.float32), "next_obs": obs + np.float32(0.01),
            "done": np.zeros(n, np.float32)}


class CopyGenerator:
    """Stub generator: 'samples' are rows of the real data (fit/sample cost is not what is timed)."""

    conditional = True

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data

    def fit(self, offline: Any, online: Any = None, **_: Any) -> None:
        return None

    def sample(self, n: int, label: Any = "online", **_: Any) -> TransitionBatch:
        idx = np.arange(n) % len(self.data["obs"])
        return TransitionBatch.from_arrays(**{k: v[idx] for k, v in self.data.items()})

    def state_tensors(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return {}, {}


def build_ours(data: dict[str, np.ndarray], mode: str) -> AugmentedReplayBuffer:
    n = len(data["obs"])
    half = n // 2
    cfg = CFDGConfig(augmentation=mode)  # paper sizes: 200K + 800K synthetic
    gen = CopyGenerator(data) if mode == "cfdg" else None
    buf = AugmentedReplayBuffer(OBS, ACT, online_capacity=n - half, config=cfg, seed=0, generator=gen)  # type: ignore[arg-type]
    buf.add_offline({k: v[:half] for k, v in data.items()})
    buf.add({k: v[half:] for k, v in data.items()})
    if mode == "cfdg":
        buf.refresh()
    return buf


def build_d3rlpy(data: dict[str, np.ndarray], episode_len: int = 1000) -> tuple[Any, int]:
    from d3rlpy.dataset import Episode, InfiniteBuffer, ReplayBuffer

    n = len(data["obs"])
    episodes = [
        Episode(observations=data["obs"][s:s + episode_len], actions=data["act"][s:s + episode_len],
                rewards=data["rew"][s:s + episode_len, None], terminated=False)
        for s in range(0, n, episode_len)
    ]
    rb = ReplayBuffer(InfiniteBuffer(), episodes=episodes)
    nbytes = sum(e.observations.nbytes + e.actions.nbytes + e.rewards.nbytes for e in episodes)
    return rb, nbytes


def build_sb3(data: dict[str, np.ndarray]) -> tuple[Any, int]:
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    n = len(data["obs"])
    rb = ReplayBuffer(n, spaces.Box(-np.inf, np.inf, (OBS,), np.float32), spaces.Box(-1, 1, (ACT,), np.float32),
                      device="cpu")
    rb.observations[:, 0] = data["obs"]
    rb.next_observations[:, 0] = data["next_obs"]
    rb.actions[:, 0] = data["act"]
    rb.rewards[:, 0] = data["rew"]
    rb.dones[:, 0] = data["done"]
    rb.pos, rb.full = 0, True
    nbytes = sum(getattr(rb, k).nbytes for k in ("observations", "next_observations", "actions", "rewards",
                                                  "dones", "timeouts"))
    return rb, nbytes


def to_torch(batch: TransitionBatch) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in (batch.obs, batch.act, batch.next_obs, batch.done, batch.rew))


def time_rounds(fns: dict[str, Callable[[], Any]], calls: dict[str, int], rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of the mean seconds per call."""
    for name, fn in fns.items():  # warm-up (caches, page faults)
        for _ in range(min(50, calls[name])):
            fn()
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            per[name].append((time.perf_counter() - t) / calls[name])
    return {k: statistics.median(v) for k, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="transitions held by every buffer")
    ap.add_argument("--calls", type=int, default=2000, help="sample calls per round (d3rlpy: calls / 20)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)

    print(f"building buffers with {args.n:,} transitions ...", flush=True)
    data = make_data(args.n)
    ours_none = build_ours(data, "none")
    ours_cfdg = build_ours(data, "cfdg")
    d3, d3_bytes = build_d3rlpy(data)
    sb3, sb3_bytes = build_sb3(data)
    print(f"  d3rlpy transition_count={d3.transition_count:,}; ours pools={ours_cfdg.pool_sizes}", flush=True)

    fns: dict[str, Callable[[], Any]] = {
        "ours_none": lambda: ours_none.sample(BATCH),
        "ours_cfdg_4pools": lambda: ours_cfdg.sample(BATCH),
        "ours_cfdg_4pools_torch": lambda: to_torch(ours_cfdg.sample(BATCH)),
        "d3rlpy": lambda: d3.sample_transition_batch(BATCH),
        "sb3": lambda: sb3.sample(BATCH),
    }
    calls = {k: (max(1, args.calls // 20) if k == "d3rlpy" else args.calls) for k in fns}
    t = time_rounds(fns, calls, args.rounds)

    real_stored = ours_none.num_offline + ours_none.num_online
    mem_ours = ours_none.nbytes / real_stored
    all_stored = sum(ours_cfdg.pool_sizes.values())
    mem_ours_cfdg = ours_cfdg.nbytes / all_stored
    result = {
        "n_transitions": args.n, "batch_size": BATCH, "rounds": args.rounds, "calls": calls,
        "us_per_call": {k: v * 1e6 for k, v in t.items()},
        "ratio_vs_d3rlpy": {k: t[k] / t["d3rlpy"] for k in fns if k.startswith("ours")},
        "ratio_vs_sb3": {k: t[k] / t["sb3"] for k in fns if k.startswith("ours")},
        "bytes_per_transition": {
            "raw_float32": RAW_BYTES, "ours_real_pools": mem_ours, "ours_all_four_pools": mem_ours_cfdg,
            "sb3": sb3_bytes / args.n, "d3rlpy_episodes": d3_bytes / d3.transition_count,
        },
        "memory_ratio_vs_raw": mem_ours / RAW_BYTES,
        "targets": {"ratio_vs_d3rlpy": "<= 1.0", "ratio_vs_sb3": "<= 1.5", "memory_ratio_vs_raw": "<= 1.1"},
    }
    result["targets_met"] = {
        "ratio_vs_d3rlpy": max(result["ratio_vs_d3rlpy"].values()) <= 1.0,
        "ratio_vs_sb3": result["ratio_vs_sb3"]["ours_cfdg_4pools_torch"] <= 1.5
        and result["ratio_vs_sb3"]["ours_none"] <= 1.5,
        "memory_ratio_vs_raw": result["memory_ratio_vs_raw"] <= 1.1,
    }
    path = write_result("bench_buffer", result)

    print(f"\nsample({BATCH}) with {args.n:,} transitions (median of {args.rounds} interleaved rounds)")
    print(f"{'buffer':<26}{'us/call':>10}{'/ d3rlpy':>10}{'/ SB3':>8}")
    for k, v in t.items():
        rd = f"{t[k] / t['d3rlpy']:.3f}x"
        rs = f"{t[k] / t['sb3']:.2f}x"
        print(f"{k:<26}{v * 1e6:>10.1f}{rd:>10}{rs:>8}")
    print(f"\nbytes per stored transition: ours {mem_ours:.1f} vs raw float32 {RAW_BYTES} "
          f"-> {mem_ours / RAW_BYTES:.3f}x (SB3 {sb3_bytes / args.n:.1f}, d3rlpy episodes "
          f"{d3_bytes / d3.transition_count:.1f}, no next_obs)")
    print(f"targets met: {result['targets_met']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
