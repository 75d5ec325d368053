"""Return of the episodes a pre-trained IQL agent collects at several exploration scales.

    OMP_NUM_THREADS=1 python docs/results/baseline/explore_probe.py walker2d \
        docs/results/study2/runs/pretrained/iql-s0-b13b5733a7f95432 --episodes 4 --scales 1 0.5 0.25 0

The agent is one of the shared pre-trained agents (``OUT/pretrained/<key>/``, not committed: made
by any run of the small profile on that dataset and seed). Actions are
``runner.explore(algo, obs, scale)``, as in the online phase of a run with ``exploration_scale``;
scale 0 is the greedy policy that evaluations use. Episodes start from ``reset(seed=100 + i)``,
the policy's noise from ``torch.manual_seed(0)`` at each scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from cfdg_aug.experiments.runner import ExperimentConfig, build_algo, explore

ENV_IDS = {"hopper": "Hopper-v4", "walker2d": "Walker2d-v4", "halfcheetah": "HalfCheetah-v4"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=sorted(ENV_IDS))
    p.add_argument("agent", type=Path, help="a pre-trained agent folder (model.pt, key.json)")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    a = p.parse_args()
    torch.set_num_threads(1)
    import d3rlpy

    env_id = ENV_IDS[a.task]
    key = json.loads((a.agent / "key.json").read_text())
    scaler = key["algo_config"]["observation_scaler"]["params"]
    cfg = ExperimentConfig(algo="iql", augmentation="none", dataset=f"../shared/datasets/{a.task}-medium-50k.hdf5",
                           algo_kwargs=dict(weight_temp=1.0, actor_learning_rate=1e-3))
    algo = build_algo(cfg, env_id, "cpu")
    # the fitted standardisation is part of the agent (key.json), not of model.pt
    object.__setattr__(algo.config, "observation_scaler", d3rlpy.preprocessing.StandardObservationScaler(
        mean=np.asarray(scaler["mean"]), std=np.asarray(scaler["std"])))
    env = gym.make(env_id)
    algo.build_with_env(env)
    algo.load_model(str(a.agent / "model.pt"))
    for scale in a.scales:
        torch.manual_seed(0)
        returns = []
        for i in range(a.episodes):
            obs, _ = env.reset(seed=100 + i)
            done, ret = False, 0.0
            while not done:
                act = explore(algo, np.asarray(obs, np.float32)[None], scale)[0]
                obs, r, term, trunc, _ = env.step(act)
                ret, done = ret + float(r), term or trunc
            returns.append(ret)
        print(f"{a.task} {a.agent.name} scale {scale:g}: return {np.mean(returns):.0f} +- {np.std(returns):.0f} "
              f"over {a.episodes} episodes", flush=True)


if __name__ == "__main__":
    main()
