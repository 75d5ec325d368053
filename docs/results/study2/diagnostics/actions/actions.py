"""What IQL's critic and actor see on each source of a CFDG batch, at the first refresh of a Study 2 run.

Usage (repository root, 1 torch thread):
    python docs/results/study2/diagnostics/actions/actions.py per_source hopper 0
    python docs/results/study2/diagnostics/actions/actions.py samplers hopper 0
    python docs/results/study2/diagnostics/actions/actions.py behaviour hopper 0
    python docs/results/study2/diagnostics/actions/actions.py score hopper 0

Every command loads the shared pre-trained IQL agent of (task, seed) from Study 2
(docs/results/study2/runs/pretrained/, re-created by any Study 2 run of that task and seed), rolls
it out for ``min_online`` steps into the d3rlpy CFDGReplayBuffer exactly as ``cfdg-aug run`` does,
and fits the generator once (the run's first refresh; cached in /tmp, with the behaviour filter
off, so the cache holds the unfiltered generator every command starts from). Then, with the
pre-trained networks, on 4,096 rows per source:

- ``per_source``: Q, V, advantage, AWR weight exp(A) (clipped at 100), log pi(a|s), TD error, per pool;
- ``samplers``: log pi(a|s) of online-labelled rows from other samplers, step counts and guidance;
- ``behaviour``: the same after the behaviour filter, by behaviour-model steps and quantile.
- ``score``: the same by the filter's statistic (``behaviour_score``: log-likelihood or Mahalanobis
  distance) and quantile, one behaviour model (the default's 10,000 steps), with the classifier AUC of
  the kept rows' states against the real online states.

Writes ``<command>_<task>_s<seed>.json`` beside this file. Figures: README.md here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def setup(task: str, seed: int) -> tuple[Any, Any, Any]:
    """(pre-trained IQL, buffer's core AugmentedReplayBuffer with pools filled, fitted generator)."""
    import d3rlpy
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import FIFOBuffer, InfiniteBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import load_dataset, make_env
    from cfdg_aug.experiments import runner as R
    from cfdg_aug.generator import CFDGGenerator
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    cfg = R.resolve_config("iql", "cfdg", f"../shared/datasets/{task}-medium-50k.hdf5", "small", seed,
                           {"cfdg": {"behaviour_quantile": None}})
    d3rlpy.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    ds = load_dataset(cfg.dataset)
    off = ds.to_transition_batch()
    algo = R.build_algo(cfg, ds.env_id, "cpu")
    scaler_buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=off, config=CFDGConfig.small(augmentation="none"),
                                  seed=seed)
    build_scalers_with_transition_picker(algo, scaler_buf)
    key = R.pretrain_key(R.pretrain_key_info(cfg, algo, off, "cpu"))
    algo.build_with_dataset(scaler_buf)
    algo.load_model(f"docs/results/study2/runs/pretrained/{key}/model.pt")
    env = make_env(ds.env_id)
    ccfg = cfg.cfdg_config()
    buf = CFDGReplayBuffer(FIFOBuffer(cfg.online_steps), env=env, offline_dataset=off, config=ccfg,
                           online_capacity=cfg.online_steps, seed=seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(ccfg.min_online):
        act = algo.sample_action(np.asarray(obs, np.float32)[None])[0]
        nxt, rew, term, trunc, _ = env.step(act)
        buf.append(obs, act, float(rew))
        if term or trunc:
            buf.clip_episode(bool(term))
            obs, _ = env.reset()
        else:
            obs = nxt
    core = buf.augmented
    cache = Path(f"/tmp/cfdg_diag_gen_{task}_s{seed}.safetensors")
    if cache.exists():
        gen = CFDGGenerator.load(cache)
        core._generator = gen
        for pool, label in ((2, "offline"), (3, "online")):
            b = gen.sample(ccfg.synthetic_online_size if label == "online" else ccfg.synthetic_offline_size, label)
            core._fill_synthetic(pool, (b.flatten(), np.zeros(len(b), dtype=bool)))
    else:
        t0 = time.time()
        core.refresh()
        print(f"generator fit {time.time() - t0:.0f} s", flush=True)
        gen = core.generator
        gen.save(cache)
    return algo, core, gen


def learner_view(algo: Any, tb: Any) -> dict[str, np.ndarray]:
    """Per row: Q(s,a), V(s), V(s'), advantage, AWR weight and log pi(a|s) under ``algo`` (IQL)."""
    from d3rlpy.models.torch.policies import build_gaussian_distribution
    from d3rlpy.torch_utility import TorchMiniBatch

    from cfdg_aug.integrations.d3rlpy import transition_batch_to_minibatch

    t = TorchMiniBatch.from_batch(transition_batch_to_minibatch(tb), gamma=algo.config.gamma,
                                  compute_returns_to_go=False, device="cpu:0",
                                  observation_scaler=algo.observation_scaler, action_scaler=algo.action_scaler,
                                  reward_scaler=algo.reward_scaler)
    impl, m = algo.impl, algo.impl._modules
    with torch.no_grad():
        q = impl._targ_q_func_forwarder.compute_expected_q(t.observations, t.actions, "min")
        v, vn = m.value_func(t.observations), m.value_func(t.next_observations)
        td = q - (t.rewards + algo.config.gamma * (1 - t.terminals) * vn)
        adv = q - v
        w = torch.exp(algo.config.weight_temp * adv).clamp(max=100.0)
        lp = build_gaussian_distribution(m.policy(t.observations)).log_prob(t.actions)
    return {k: x.reshape(-1).numpy() for k, x in dict(q=q, v=v, adv=adv, w=w, logp=lp, td=td).items()}


def summary(view: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    lp, w = view["logp"], view["w"]
    d = dict(q=view["q"].mean(), adv=view["adv"].mean(), w_mean=w.mean(), td_abs=np.abs(view["td"]).mean(),
             logp_mean=lp.mean(), logp_q10=np.quantile(lp, 0.1), logp_med=np.median(lp),
             below_real_q05=(lp < threshold).mean(), wlogp=(w * lp).mean())
    return {k: round(float(x), 4) for k, x in d.items()}


def main(command: str, task: str, seed: int) -> None:
    from cfdg_aug.transitions import TransitionBatch

    torch.set_num_threads(1)
    algo, core, gen = setup(task, seed)
    rng = np.random.default_rng(0)
    real_off = core.offline_data()[rng.integers(0, core.num_offline, 4096)]
    threshold = float(np.quantile(learner_view(algo, real_off)["logp"], 0.05))
    res: dict[str, Any] = {}

    def report(name: str, tb: Any) -> None:
        res[name] = summary(learner_view(algo, tb), threshold)
        print(f"{name:40s} {res[name]}", flush=True)

    report("real_offline", real_off)
    report("real_online", core.online_data()[rng.integers(0, core.num_online, 4096)])
    if command == "per_source":
        for src in ("synthetic_offline", "synthetic_online"):
            report(src, core.sample_from(src, 4096))
    elif command == "samplers":
        base = gen.config
        for name, change in (("dpmpp_2m 10 steps (default)", {}), ("heun 32", dict(sampler="heun", num_sample_steps=32)),
                             ("heun 128", dict(sampler="heun", num_sample_steps=128)),
                             ("dpmpp_2m 32", dict(num_sample_steps=32)),
                             ("dpmpp_2m 10 sigma_min 0.002", dict(sigma_min=0.002)),
                             ("heun 32 sigma_min 0.002", dict(sampler="heun", num_sample_steps=32, sigma_min=0.002))):
            gen.config = dataclasses.replace(base, **change)
            report(name, gen.sample(4096, "online"))
        gen.config = base
        for w in (1.0, 2.0):
            report(f"dpmpp_2m 10 w={w}", gen.sample(4096, "online", guidance=w))
    elif command == "behaviour":
        offd, ond = core.offline_data(), core.online_data()
        both = TransitionBatch.concat([offd, ond])
        labels = np.concatenate([np.zeros(len(offd), np.int64), np.ones(len(ond), np.int64)])
        for steps in (2000, 5000, 10000):
            for q in (0.05, 0.1, 0.2):
                gen.config = dataclasses.replace(gen.config, behaviour_quantile=q, behaviour_steps=steps)
                gen._fit_behaviour(both, labels, False, False)
                report(f"behaviour {steps} steps q {q}", gen.sample(4096, "online"))
                res[f"behaviour {steps} steps q {q}"]["accept_rate"] = gen.last_behaviour_stats["accept_rate"]
    elif command == "score":
        from cfdg_aug.diagnostics.stats import classifier_auc

        offd, ond = core.offline_data(), core.online_data()
        both = TransitionBatch.concat([offd, ond])
        labels = np.concatenate([np.zeros(len(offd), np.int64), np.ones(len(ond), np.int64)])
        gen.config = dataclasses.replace(gen.config, behaviour_quantile=0.2, behaviour_steps=None)
        gen._fit_behaviour(both, labels, False, False)  # the default behaviour model, fitted once
        real_on = ond[rng.integers(0, len(ond), 4096)]
        for score in ("log_prob", "mahalanobis"):
            for q in (0.05, 0.1, 0.2):
                name = f"{score} q {q}"
                gen.config = dataclasses.replace(gen.config, behaviour_score=score, behaviour_quantile=q)
                gen.set_behaviour_thresholds(both, labels)
                b = gen.sample(4096, "online")
                report(name, b)
                res[name]["accept_rate"] = gen.last_behaviour_stats["accept_rate"]
                # how far the filter moves the generated states from the real online ones
                res[name]["state_auc"] = round(classifier_auc(real_on.obs, b.obs, seed=0)["auc"], 4)
    else:
        raise SystemExit(f"unknown command {command!r}: per_source, samplers, behaviour or score")
    out = HERE / f"{command}_{task}_s{seed}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
