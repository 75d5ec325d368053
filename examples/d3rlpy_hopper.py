"""Quickstart: IQL pre-trained offline, then fine-tuned online with CFDG, in plain d3rlpy.

    python examples/d3rlpy_hopper.py                       # a few minutes on 2 CPU cores
    python examples/d3rlpy_hopper.py --offline-steps 100 --online-steps 300 --refresh-every 150 --tiny  # seconds

The only CFDG-specific line is the buffer: `CFDGReplayBuffer` is a `d3rlpy.dataset.ReplayBuffer`,
so `fit` and `fit_online` use it unchanged. It holds the offline data in its own pool (never
evicted), collects online transitions through `append` / `clip_episode`, retrains the diffusion
model every `refresh_every` online steps and returns mixed batches from `sample_transition_batch`.
"""

from __future__ import annotations

import argparse

import d3rlpy
import numpy as np
from d3rlpy.dataset import InfiniteBuffer

from cfdg_aug import CFDGConfig
from cfdg_aug.datasets import load_dataset, make_env, normalized_score
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer
from cfdg_aug.transitions import SOURCE_NAMES


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="embedded", help="'embedded', a D4RL .hdf5 path or name, or minari:ID")
    p.add_argument("--offline-steps", type=int, default=5_000)
    p.add_argument("--online-steps", type=int, default=6_000)
    p.add_argument("--refresh-every", type=int, default=2_000)
    p.add_argument("--generator-steps", type=int, default=None, help="generator training steps per refresh "
                   "(default: the small profile's)")
    p.add_argument("--tiny", action="store_true", help="a tiny generator and synthetic pools (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = load_dataset(args.dataset)
    env = make_env(data.env_id)
    d3rlpy.seed(args.seed)

    # IQL with its locomotion hyperparameters (expectile 0.7, temperature 3).
    iql = d3rlpy.algos.IQLConfig(expectile=0.7, weight_temp=3.0, max_weight=100.0,
                                 reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0)).create()

    # 1. Offline pre-training: augmentation "none" serves the offline data only.
    offline = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=data, config=CFDGConfig.small(augmentation="none"))
    iql.fit(offline, n_steps=args.offline_steps, n_steps_per_epoch=args.offline_steps, show_progress=False,
            save_interval=10**9, logger_adapter=d3rlpy.logging.NoopAdapterFactory())

    # 2. Online fine-tuning with CFDG: small CPU profile, refreshes every --refresh-every steps.
    budget: dict[str, int] = {}
    if args.tiny:  # every cost of a refresh shrunk: network, fit, solver steps, redraws, pool sizes
        budget = dict(width=32, depth=1, train_steps=50, warm_start_steps=20, num_sample_steps=4, redraw_steps=4,
                      redraw_resample=2, synthetic_online_size=256, synthetic_offline_size=64)
    if args.generator_steps is not None:
        budget.update(train_steps=args.generator_steps, warm_start_steps=args.generator_steps)
    cfg = CFDGConfig.small(refresh_every=args.refresh_every, min_online=min(1_000, args.refresh_every), **budget)
    buffer = CFDGReplayBuffer(InfiniteBuffer(), env=env, offline_dataset=data, config=cfg, seed=args.seed)
    before = _score(iql, data.env_id, args.seed)
    iql.fit_online(env, buffer=buffer, n_steps=args.online_steps, n_steps_per_epoch=args.online_steps,
                   update_start_step=0, show_progress=False, save_interval=10**9,
                   logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    after = _score(iql, data.env_id, args.seed)

    shares = buffer.source_histogram / max(1, buffer.source_histogram.sum())
    print(f"normalised score: before {before:.1f}, after {after:.1f}; refreshes: {len(buffer.refresh_log)}")
    print("batch composition: " + ", ".join(f"{n} {s:.0%}" for n, s in zip(SOURCE_NAMES, shares, strict=True)))
    return {"before": before, "after": after, "refreshes": float(len(buffer.refresh_log)),
            "online_transitions": float(buffer.augmented.online_added_total)}


def _score(algo: d3rlpy.algos.IQL, env_id: str, seed: int, episodes: int = 3) -> float:
    env = make_env(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 1000 + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(algo.predict(obs[None])[0])
            total += float(r)
            done = term or trunc
        returns.append(total)
    return float(normalized_score(env_id, np.mean(returns)))


if __name__ == "__main__":
    main()
