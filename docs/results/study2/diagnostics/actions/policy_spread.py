"""How wide IQL's stochastic policy is after fine-tuning, per run: the std of pi(.|s) on real states,
and the return of its stochastic (exploration) and greedy (evaluation) rollouts.

    python docs/results/study2/diagnostics/actions/policy_spread.py RUN_DIR[=MODEL_PT] ...

Needs each run's ``model_final.pt`` (kept beside the committed files, not committed), or the
weights given after ``=`` (e.g. the shared pre-trained agent, ``runs/pretrained/KEY/model.pt``). Why: in
Study 2 the ``cfdg`` arm's *rollout* returns (the exploring policy, ``rollout_return_mean`` in
metrics.csv) sit below ``none``'s on every task, while its greedy evaluations do so on hopper only.
A policy whose std grew on synthetic actions explores with noisier actions: this measures it."""
import json
import sys

import numpy as np
import torch
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.dataset import InfiniteBuffer

from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_dataset, make_env, normalized_score
from cfdg_aug.experiments import runner as R
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

torch.set_num_threads(1)
EPISODES = 10
out = {}
for arg in sys.argv[1:]:
    run_dir, _, model = arg.partition("=")
    cfg = R.ExperimentConfig.from_dict(json.load(open(f"{run_dir}/config.json"))["config"])
    ds = load_dataset(cfg.dataset)
    off = ds.to_transition_batch()
    algo = R.build_algo(cfg, ds.env_id, "cpu")
    sb = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=off, config=CFDGConfig.small(augmentation="none"), seed=0)
    build_scalers_with_transition_picker(algo, sb)
    algo.build_with_dataset(sb)
    online = R._online_algo(cfg, algo, "cpu")
    online.load_model(model or f"{run_dir}/model_final.pt")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(off.rew), 4096)
    obs = torch.as_tensor(off.obs[idx])
    with torch.no_grad():
        x = online.observation_scaler.transform(obs)
        out_ = online.impl._modules.policy(x)
        std = out_.logstd.exp().expand_as(out_.mu)  # IQL's std is one parameter per action dim
        mu = out_.squashed_mu
    act = torch.as_tensor(off.act[idx])
    env = make_env(ds.env_id)
    rets = {}
    for mode, fn in (("greedy", online.predict), ("stochastic", online.sample_action)):
        r = []
        for i in range(EPISODES):
            o, _ = env.reset(seed=123 + i)
            done, tot = False, 0.0
            while not done:
                o, rew, term, trunc, _ = env.step(fn(np.asarray(o, np.float32)[None])[0])
                tot += float(rew)
                done = term or trunc
            r.append(tot)
        rets[mode] = float(normalized_score(ds.env_id, float(np.mean(r))))
    name = run_dir.rstrip("/").split("/")[-1] + (" (pre-trained)" if "pretrained" in model else "")
    out[name] = {"policy_std_mean": float(std.mean()), "policy_std_per_dim": [float(v) for v in std.mean(0)],
                 "mean_abs_mu_minus_data_action": float((mu - act).abs().mean()),
                 "score_greedy": rets["greedy"], "score_stochastic": rets["stochastic"]}
    print(name, json.dumps(out[name]), flush=True)
