"""Per-variant check of synthetic actions as IQL's actor sees them (policy log-prob of a given s).

Same setup as diag_adv.py (shared pre-trained agent, 5K-step rollout, one generator fit, saved and
reused). For each sampling variant: distribution of log pi(a|s) over 4096 online-labelled rows, the
fraction below the real offline rows' 5% quantile, and the mean AWR weight.
"""
import dataclasses, os, sys, time, json
import numpy as np, torch
torch.set_num_threads(1)
from cfdg_aug.experiments import runner as R
from cfdg_aug.config import CFDGConfig
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.datasets import load_dataset, make_env
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_minibatch
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.dataset import InfiniteBuffer, FIFOBuffer
from d3rlpy.torch_utility import TorchMiniBatch
from d3rlpy.models.torch.policies import build_gaussian_distribution
import d3rlpy

task, seed = sys.argv[1], int(sys.argv[2])
cfg = R.resolve_config("iql", "cfdg", f"../shared/datasets/{task}-medium-50k.hdf5", "small", seed, {})
d3rlpy.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
ds = load_dataset(cfg.dataset); env_id = ds.env_id
off = ds.to_transition_batch()
algo = R.build_algo(cfg, env_id, "cpu")
sb = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=off, config=CFDGConfig.small(augmentation="none"), seed=seed)
build_scalers_with_transition_picker(algo, sb)
key = R.pretrain_key(R.pretrain_key_info(cfg, algo, off, "cpu"))
algo.build_with_dataset(sb)
algo.load_model("docs/results/study2/runs/pretrained/" + key + "/model.pt")
env = make_env(env_id)
ccfg = cfg.cfdg_config()
buf = CFDGReplayBuffer(FIFOBuffer(cfg.online_steps), env=env, offline_dataset=off, config=ccfg,
                       online_capacity=cfg.online_steps, seed=seed)
obs, _ = env.reset(seed=seed)
for step in range(1, ccfg.min_online + 1):
    a = algo.sample_action(np.asarray(obs, np.float32)[None])[0]
    nxt, r, term, trunc, _ = env.step(a)
    buf.append(obs, a, float(r))
    if term or trunc:
        buf.clip_episode(bool(term)); obs, _ = env.reset()
    else:
        obs = nxt
gpath = f"/tmp/cfdg_diag_gen_{task}_s{seed}.safetensors"
core = buf.augmented
if os.path.exists(gpath):
    gen = CFDGGenerator.load(gpath)
else:
    t0 = time.time(); core.refresh(); print("fit", round(time.time() - t0), "s", flush=True)
    gen = core.generator; gen.save(gpath)
impl = algo.impl; m = impl._modules; beta = algo.config.weight_temp

def stats(tb):
    mb = transition_batch_to_minibatch(tb)
    t = TorchMiniBatch.from_batch(mb, gamma=0.99, compute_returns_to_go=False, device="cpu:0",
                                  observation_scaler=algo.observation_scaler, action_scaler=algo.action_scaler,
                                  reward_scaler=algo.reward_scaler)
    with torch.no_grad():
        q = impl._targ_q_func_forwarder.compute_expected_q(t.observations, t.actions, "min")
        adv = q - m.value_func(t.observations)
        w = torch.exp(beta * adv).clamp(max=100.0)
        lp = build_gaussian_distribution(m.policy(t.observations)).log_prob(t.actions).squeeze(-1)
    return lp.numpy(), w.squeeze(-1).numpy()

rng = np.random.default_rng(0)
real_off = off[rng.integers(0, len(off.rew), 4096)]
lp_off, w_off = stats(real_off)
thr = float(np.quantile(lp_off, 0.05))
res = {}
def report(name, tb):
    lp, w = stats(tb)
    d = dict(mean=lp.mean(), q10=np.quantile(lp, 0.1), med=np.median(lp), below_real_q05=(lp < thr).mean(),
             w_mean=w.mean(), wlogp=(w * lp).mean())
    res[name] = {k: round(float(v), 3) for k, v in d.items()}
    print(f"{name:28s}", res[name], flush=True)
report("real_offline", real_off)
on = core.online_data(); report("real_online", on[rng.integers(0, len(on.rew), 4096)])
base = gen.config
variants = [("dpmpp_2m10 (default)", {}), ("heun32", dict(sampler="heun", num_sample_steps=32)),
            ("heun128", dict(sampler="heun", num_sample_steps=128)),
            ("dpmpp_2m32", dict(num_sample_steps=32)), ("dpmpp_2m10 smin0.002", dict(sigma_min=0.002)),
            ("heun32 smin0.002", dict(sampler="heun", num_sample_steps=32, sigma_min=0.002))]
for name, ch in variants:
    gen.config = dataclasses.replace(base, **ch)
    t0 = time.time()
    tb = gen.sample(4096, "online")
    report(name + f" [{time.time()-t0:.1f}s]", tb)
gen.config = base
for w in (1.0, 2.0):
    report(f"dpmpp10 w={w}", gen.sample(4096, "online", guidance=w))
report("dpmpp10 label=offline", gen.sample(4096, "offline"))
json.dump(res, open(f"docs/results/study2/diagnostics/actions/sampler_variants_{task}_s{seed}.json", "w"), indent=1)
