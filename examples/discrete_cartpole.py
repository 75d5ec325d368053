"""DQN + CFDG on CartPole-v1 (discrete actions): offline data, offline pre-training, online learning.

The diffusion generator models the Discrete(2) action one-hot and decodes it by argmax, so every
synthetic transition carries a valid action; the replay buffer hands DQN the action *indices* it
expects. Runs with stable-baselines3 (default) or d3rlpy::

    python examples/discrete_cartpole.py                         # CPU-sized defaults (minutes)
    python examples/discrete_cartpole.py --library d3rlpy
    python examples/discrete_cartpole.py --tiny --online-steps 300 --pretrain-steps 50 --refresh-every 100

What happens:
1. Offline data: a scripted controller (push towards the side the pole falls to) with 80% random
   actions collects ``--offline-transitions`` transitions, a poor behaviour policy's data.
2. The agent's replay buffer is CFDG's: SB3 ``DQN(..., replay_buffer_class=CFDGReplayBuffer)``
   with ``prefill_offline``, or d3rlpy ``CFDGReplayBuffer(FIFOBuffer(...), env=env,
   offline_dataset=...)``; the data goes to the never-evicted offline pool.
3. ``--pretrain-steps`` DQN gradient steps on offline batches, then ``--online-steps`` environment
   steps of online DQN; every ``--refresh-every`` online transitions the generator is refitted on
   offline + online data and the synthetic pools regenerated; batches mix real offline : real
   online : synthetic = 1 : 1 : 1.
4. Prints (and returns from ``main``) the mean evaluation return before and after online learning,
   the number of refreshes and the share of synthetic transitions whose action is a valid index.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from cfdg_aug.config import CFDGConfig
from cfdg_aug.transitions import TransitionBatch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", choices=["sb3", "d3rlpy"], default="sb3")
    p.add_argument("--offline-transitions", type=int, default=20_000, help="offline transitions to collect")
    p.add_argument("--pretrain-steps", type=int, default=5_000, help="DQN gradient steps on offline data")
    p.add_argument("--online-steps", type=int, default=20_000, help="environment steps of online DQN")
    p.add_argument("--refresh-every", type=int, default=5_000, help="online transitions between generator refreshes")
    p.add_argument("--augmentation", choices=["cfdg", "unconditional", "none"], default="cfdg")
    p.add_argument("--tiny", action="store_true", help="a tiny generator (smoke runs)")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scripted_data(n: int, epsilon: float, seed: int) -> TransitionBatch:
    """``n`` CartPole-v1 transitions of the scripted controller with ``epsilon``-random actions."""
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    cols: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "rew", "next_obs", "done", "timeout")}
    obs, _ = env.reset(seed=seed)
    while len(cols["obs"]) < n:
        x, x_dot, theta, theta_dot = obs
        a = int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)
        if rng.random() < epsilon:
            a = int(rng.integers(2))
        nxt, rew, term, trunc, _ = env.step(a)
        for k, v in (("obs", obs), ("act", [a]), ("rew", rew), ("next_obs", nxt), ("done", float(term)),
                     ("timeout", bool(trunc and not term))):
            cols[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    cols["timeout"][-1] = cols["timeout"][-1] or not cols["done"][-1]  # the cut last episode
    return TransitionBatch.from_arrays(*(np.asarray(cols[k]) for k in ("obs", "act", "rew", "next_obs", "done", "timeout")))


def make_config(args: argparse.Namespace) -> CFDGConfig:
    over: dict[str, Any] = dict(augmentation=args.augmentation, refresh_every=args.refresh_every,
                                min_online=min(args.refresh_every, 2_000))
    if args.tiny:
        over.update(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4,
                    synthetic_online_size=256, synthetic_offline_size=64)
    return CFDGConfig.small(**over)


def evaluate(act: Any, episodes: int, seed: int) -> float:
    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + seed + i)
        done, total = False, 0.0
        while not done:
            obs, rew, term, trunc, _ = env.step(act(obs))
            total += float(rew)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def valid_share(core: Any) -> float | None:
    """Share of synthetic transitions whose action decodes to a valid index (one-hot rows)."""
    acts = [core.pool_data(p).act for p in ("synthetic_offline", "synthetic_online") if core.pool_sizes[p]]
    if not acts:
        return None
    a = np.concatenate(acts)
    return float(np.mean((a.sum(axis=1) == 1.0) & np.isin(a, (0.0, 1.0)).all(axis=1)))


def run_sb3(args: argparse.Namespace, data: TransitionBatch) -> dict[str, Any]:
    from stable_baselines3 import DQN

    from cfdg_aug.integrations.sb3 import CFDGCallback, CFDGReplayBuffer, prefill_offline, pretrain_offline

    model = DQN("MlpPolicy", gym.make("CartPole-v1"), learning_starts=0, buffer_size=100_000, batch_size=64,
                learning_rate=1e-3, exploration_fraction=0.2, target_update_interval=500, seed=args.seed,
                policy_kwargs=dict(net_arch=[64, 64]), replay_buffer_class=CFDGReplayBuffer,
                replay_buffer_kwargs={"config": make_config(args)})
    prefill_offline(model, data)  # Discrete actions are indices: nothing to scale
    if args.pretrain_steps:
        pretrain_offline(model, args.pretrain_steps)

    def act(o: np.ndarray) -> int:
        return int(model.predict(o, deterministic=True)[0])

    before = evaluate(act, args.eval_episodes, args.seed)
    callback = CFDGCallback()
    model.learn(args.online_steps, callback=callback)
    buf = model.replay_buffer
    return {"before": before, "after": evaluate(act, args.eval_episodes, args.seed),
            "refreshes": buf.num_refreshes, "online_transitions": int(buf.augmented.online_added_total),
            "valid_synthetic_actions": valid_share(buf.augmented), "pool_sizes": buf.pool_sizes}


def run_d3rlpy(args: argparse.Namespace, data: TransitionBatch) -> dict[str, Any]:
    import d3rlpy
    from d3rlpy.algos import DQNConfig, LinearDecayEpsilonGreedy
    from d3rlpy.dataset import FIFOBuffer

    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_episodes

    d3rlpy.seed(args.seed)
    env = gym.make("CartPole-v1")
    env.reset(seed=args.seed)
    buf = CFDGReplayBuffer(FIFOBuffer(100_000), env=env, offline_dataset=transition_batch_to_episodes(data),
                           config=make_config(args), seed=args.seed)
    dqn = DQNConfig(batch_size=64, learning_rate=1e-3, target_update_interval=500).create(device="cpu")
    silent = d3rlpy.logging.NoopAdapterFactory()
    if args.pretrain_steps:
        dqn.fit(buf, n_steps=args.pretrain_steps, n_steps_per_epoch=args.pretrain_steps, show_progress=False,
                logger_adapter=silent)
    else:
        dqn.build_with_env(env)

    def act(o: np.ndarray) -> int:
        return int(dqn.predict(o[None].astype(np.float32))[0])

    before = evaluate(act, args.eval_episodes, args.seed)
    explorer = LinearDecayEpsilonGreedy(start_epsilon=0.3, end_epsilon=0.02, duration=max(args.online_steps // 5, 1))
    dqn.fit_online(env, buf, explorer, n_steps=args.online_steps, n_steps_per_epoch=args.online_steps,
                   update_start_step=0, show_progress=False, logger_adapter=silent)
    assert buf.augmented is not None
    return {"before": before, "after": evaluate(act, args.eval_episodes, args.seed),
            "refreshes": buf.augmented.num_refreshes, "online_transitions": int(buf.augmented.online_added_total),
            "valid_synthetic_actions": valid_share(buf.augmented), "pool_sizes": buf.augmented.pool_sizes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = scripted_data(args.offline_transitions, epsilon=0.8, seed=args.seed)
    out = (run_sb3 if args.library == "sb3" else run_d3rlpy)(args, data)
    out["library"] = args.library
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
