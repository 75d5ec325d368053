"""Diagnostic: what IQL's critic and actor see on each source after the first refresh.

Loads the shared pre-trained IQL agent of (task, seed), rolls it out for min_online steps into the
d3rlpy CFDGReplayBuffer exactly as `cfdg-aug run` does (refresh fires at min_online), then, with the
pre-trained networks, measures per source: Q(s,a), V(s), advantage, AWR weight exp(b*adv) (clipped 100),
share of the actor's weight mass, policy log-prob of a, TD error q - (r + g(1-d)V(s')).
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from cfdg_aug.experiments import runner as R
from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_dataset, make_env
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_minibatch
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.dataset import InfiniteBuffer, FIFOBuffer
from d3rlpy.torch_utility import TorchMiniBatch
from d3rlpy.models.torch.policies import build_gaussian_distribution
import d3rlpy

task, seed = sys.argv[1], int(sys.argv[2])
sets = dict(a.split("=", 1) for a in sys.argv[3:])
cfg = R.resolve_config("iql", "cfdg", f"../shared/datasets/{task}-medium-50k.hdf5", "small", seed, R.parse_set([f"{k}={v}" for k, v in sets.items()]))
d3rlpy.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
ds = load_dataset(cfg.dataset); env_id = ds.env_id
off = ds.to_transition_batch()
algo = R.build_algo(cfg, env_id, "cpu")
sb = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=off, config=CFDGConfig.small(augmentation="none"), seed=seed)
build_scalers_with_transition_picker(algo, sb)
info = R.pretrain_key_info(cfg, algo, off, "cpu"); key = R.pretrain_key(info)
algo.build_with_dataset(sb)
pdir = "docs/results/study2/runs/pretrained/" + key
algo.load_model(pdir + "/model.pt")
print("loaded", pdir, flush=True)
env = make_env(env_id)
n_on = cfg.cfdg.get("min_online", 5000) if isinstance(cfg.cfdg, dict) else 5000
ccfg = cfg.cfdg_config()
buf = CFDGReplayBuffer(FIFOBuffer(cfg.online_steps), env=env, offline_dataset=off, config=ccfg,
                       online_capacity=cfg.online_steps, seed=seed)
obs, _ = env.reset(seed=seed); t0 = time.time()
for step in range(1, ccfg.min_online + 1):
    a = algo.sample_action(np.asarray(obs, np.float32)[None])[0]
    nxt, r, term, trunc, _ = env.step(a)
    buf.append(obs, a, float(r))
    if term or trunc:
        buf.clip_episode(bool(term)); obs, _ = env.reset()
    else:
        obs = nxt
import os
pool_file = f"/tmp/cfdg_diag_pools_{task}_s{seed}.npz"
if os.path.exists(pool_file) and not sets:
    z = np.load(pool_file)
    for i, nm in ((2, "synthetic_offline"), (3, "synthetic_online")):
        buf.augmented._fill_synthetic(i, (z[nm + "_flat"], z[nm + "_timeout"]))
else:
    buf.augmented.refresh()
    if not sets:
        arr = {}
        for nm in ("synthetic_offline", "synthetic_online"):
            i = ("real_offline", "real_online", "synthetic_offline", "synthetic_online").index(nm)
            f, to = buf.augmented._ordered_rows(i); arr[nm + "_flat"] = f; arr[nm + "_timeout"] = to
        np.savez(pool_file, **arr)
print("rollout+refresh", round(time.time() - t0), "s, refreshes", buf.augmented.num_refreshes, flush=True)
impl = algo.impl; m = impl._modules
beta = algo.config.weight_temp; gamma = algo.config.gamma
out = {}
for src in ("real_offline", "real_online", "synthetic_offline", "synthetic_online"):
    tb = buf.augmented.sample_from(src, 4096)
    mb = transition_batch_to_minibatch(tb)
    t = TorchMiniBatch.from_batch(mb, gamma=algo.config.gamma, compute_returns_to_go=False, device="cpu:0",
                                  observation_scaler=algo.observation_scaler, action_scaler=algo.action_scaler,
                                  reward_scaler=algo.reward_scaler)
    with torch.no_grad():
        q = impl._targ_q_func_forwarder.compute_expected_q(t.observations, t.actions, "min")
        v = m.value_func(t.observations)
        vn = m.value_func(t.next_observations)
        adv = q - v
        w = torch.exp(beta * adv).clamp(max=100.0)
        dist = build_gaussian_distribution(m.policy(t.observations))
        lp = dist.log_prob(t.actions)
        td = q - (t.rewards + gamma * (1 - t.terminals) * vn)
        mu = dist._mean if hasattr(dist, "_mean") else None
    d = dict(q=q.mean().item(), v=v.mean().item(), adv=adv.mean().item(), adv_p90=adv.quantile(0.9).item(),
             w_mean=w.mean().item(), w_clip_frac=(w >= 100).float().mean().item(), logp=lp.mean().item(), logp_q10=lp.quantile(0.1).item(), logp_med=lp.median().item(), logp_q90=lp.quantile(0.9).item(), logp_min=lp.min().item(),
             wlogp=(w * lp).mean().item(), td_mean=td.mean().item(), td_abs=td.abs().mean().item(),
             r=t.rewards.mean().item(), done=t.terminals.mean().item(),
             act_abs=tb.act.__abs__().mean(), act_sat=float((np.abs(tb.act) > 0.99).mean()))
    out[src] = {k: round(float(x), 4) for k, x in d.items()}
    print(src, out[src], flush=True)
json.dump(out, open(f"docs/results/study2/diagnostics/actions/per_source_critic_actor_{task}_s{seed}.json", "w"), indent=1)
