"""Per-source critic/actor statistics of a run's online checkpoint: the agent as it was at that
step (or another agent's weights, third argument), on the buffer it was training on.

    python docs/results/study2/diagnostics/actions/checkpoint_view.py RUN_DIR CHECKPOINT_DIR [MODEL_PT]

A finished run deletes its checkpoints: copy ``RUN_DIR/checkpoints/ckpt-online-*`` while the run is
going (the figures in README.md come from copies of hopper seeds 0-1 of Study 2)."""
import json
import sys

import torch
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.dataset import InfiniteBuffer
from d3rlpy.models.torch.policies import build_gaussian_distribution
from d3rlpy.torch_utility import TorchMiniBatch

from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_dataset
from cfdg_aug.experiments import runner as R
from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_minibatch

torch.set_num_threads(1)
run_dir, ck = sys.argv[1], sys.argv[2]
cfg = R.ExperimentConfig.from_dict(json.load(open(f"{run_dir}/config.json"))["config"])
ds = load_dataset(cfg.dataset)
off = ds.to_transition_batch()
algo = R.build_algo(cfg, ds.env_id, "cpu")
sb = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=off, config=CFDGConfig.small(augmentation="none"), seed=cfg.seed)
build_scalers_with_transition_picker(algo, sb)
algo.build_with_dataset(sb)
online = R._online_algo(cfg, algo, "cpu")
online.load_model(sys.argv[3] if len(sys.argv) > 3 else f"{ck}/model.pt")
buf = CFDGReplayBuffer.load_state(f"{ck}/buffer")
impl, m, beta = online.impl, online.impl._modules, online.config.weight_temp
for src in ("real_offline", "real_online", "synthetic_offline", "synthetic_online"):
    tb = buf.augmented.sample_from(src, 4096)
    t = TorchMiniBatch.from_batch(transition_batch_to_minibatch(tb), gamma=0.99, compute_returns_to_go=False,
                                  device="cpu:0", observation_scaler=online.observation_scaler,
                                  action_scaler=online.action_scaler, reward_scaler=online.reward_scaler)
    with torch.no_grad():
        q = impl._targ_q_func_forwarder.compute_expected_q(t.observations, t.actions, "min")
        v = m.value_func(t.observations)
        adv = q - v
        w = torch.exp(beta * adv).clamp(max=100.0)
        lp = build_gaussian_distribution(m.policy(t.observations)).log_prob(t.actions)
    print(f"{src:18s} q {q.mean():.2f} adv {adv.mean():.3f} w {w.mean():.2f} logp med {lp.median():.2f} "
          f"q10 {lp.quantile(0.1):.2f} wlogp {(w*lp).mean():.2f} share_of_actor_loss_mass {(w*lp).sum():.0f}", flush=True)
