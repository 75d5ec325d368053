"""SAC + CFDG on Hopper-v4 with stable-baselines3: offline prefill, offline pre-training, online learning.

Uses the hopper-medium dataset embedded in the package, so it runs without downloads::

    python examples/sb3_hopper.py                          # CPU-sized defaults (tens of minutes)
    python examples/sb3_hopper.py --online-steps 300 --pretrain-steps 50 --refresh-every 100 \\
        --tiny --out /tmp/sb3_demo                         # a smoke run in seconds

What happens:
1. ``SAC(..., replay_buffer_class=CFDGReplayBuffer, replay_buffer_kwargs={"config": ...})``.
2. ``prefill_offline(model, dataset)``: the dataset goes to the offline pool (actions scaled to
   SB3's [-1, 1] buffer units).
3. ``pretrain_offline(model, N)``: N SAC gradient steps on offline batches (plain SAC losses, no
   offline-RL conservatism; see docs/sb3.md).
4. ``model.learn(T, callback=CFDGCallback(...))``: online SAC; every ``refresh_every`` online
   transitions the buffer refits the diffusion generator on offline + online data and regenerates
   the synthetic pools; batches mix real offline : real online : synthetic = 1 : 1 : 1.
5. The model, the pickled replay buffer and the generator (safetensors) are saved in ``--out``,
   and a short evaluation prints the mean return.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_embedded
from cfdg_aug.integrations.sb3 import CFDGCallback, CFDGReplayBuffer, prefill_offline, pretrain_offline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--online-steps", type=int, default=30_000, help="environment steps of online SAC")
    p.add_argument("--pretrain-steps", type=int, default=5_000, help="SAC gradient steps on offline data (0 = none)")
    p.add_argument("--offline-limit", type=int, default=None, help="use only the first N offline transitions")
    p.add_argument("--refresh-every", type=int, default=5_000, help="online transitions between generator refreshes")
    p.add_argument("--augmentation", choices=["cfdg", "unconditional", "none"], default="cfdg")
    p.add_argument("--tiny", action="store_true", help="a tiny generator and networks (smoke tests)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-starts", type=int, default=0,
                   help="random-action steps before SAC acts (0: act with the pre-trained policy at once)")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("results/sb3_hopper"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        config = CFDGConfig.small(
            width=32, depth=1, train_steps=50, warm_start_steps=20, num_sample_steps=4, redraw_steps=4,
            redraw_resample=2, synthetic_online_size=256, synthetic_offline_size=64,
            refresh_every=args.refresh_every, min_online=args.refresh_every,
            augmentation=args.augmentation,
        )
        net: dict[str, Any] = dict(net_arch=[64, 64])
    else:
        config = CFDGConfig.small(refresh_every=args.refresh_every, min_online=min(2_000, args.refresh_every),
                                  augmentation=args.augmentation)
        net = dict(net_arch=[256, 256])

    env = gym.make("Hopper-v4")
    model = SAC(
        "MlpPolicy", env, buffer_size=max(args.online_steps, 1), batch_size=args.batch_size,
        learning_starts=args.learning_starts, seed=args.seed, device=args.device, policy_kwargs=net, verbose=0,
        replay_buffer_class=CFDGReplayBuffer, replay_buffer_kwargs={"config": config},
    )
    model.set_logger(configure(str(args.out / "logs"), ["csv", "stdout"] if not args.tiny else ["csv"]))

    dataset = load_embedded()
    n_offline = prefill_offline(model, dataset, limit=args.offline_limit)
    print(f"offline pool: {n_offline} transitions from {getattr(dataset, 'name', 'dataset')}")

    pre = pretrain_offline(model, args.pretrain_steps, progress=not args.tiny) if args.pretrain_steps else None
    if pre is not None:
        print(f"offline pre-training: {pre.gradient_steps} SAC steps in {pre.seconds:.1f}s")

    callback = CFDGCallback(save_freq=max(args.online_steps // 2, 1), save_path=args.out, name_prefix="sac_cfdg",
                            verbose=0 if args.tiny else 1)
    model.learn(args.online_steps, callback=callback, progress_bar=False)

    buf = model.replay_buffer
    assert isinstance(buf, CFDGReplayBuffer)
    model.save(args.out / "sac_cfdg_final")
    model.save_replay_buffer(args.out / "sac_cfdg_final_replay_buffer.pkl")
    has_generator = buf.save_generator(args.out / "sac_cfdg_final_generator.safetensors")

    mean_ret, std_ret = evaluate_policy(model, Monitor(gym.make("Hopper-v4")), n_eval_episodes=args.eval_episodes,
                                        deterministic=True)
    summary = {
        "online_steps": args.online_steps,
        "pretrain_steps": args.pretrain_steps,
        "offline_transitions": n_offline,
        "refreshes": buf.num_refreshes,
        "refresh_online_counts": [s.online_count for s in callback.refreshes],
        "pool_sizes": buf.pool_sizes,
        "generator_saved": has_generator,
        "eval_mean_return": float(mean_ret),
        "eval_std_return": float(std_ret),
        "last_batch_sources": np.bincount(buf.last_sources, minlength=4).tolist() if buf.last_sources is not None
        else None,
    }
    tmp = args.out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "summary.json")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
