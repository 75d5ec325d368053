"""Offline probe for docs/results/baseline.md: BC vs IQL variants on one dataset, evaluated on a schedule.

    OMP_NUM_THREADS=1 python docs/results/baseline/probe_offline.py --dataset ../shared/datasets/hopper-medium-50k.hdf5 \
        --variant iql --steps 30000 --eval-every 5000 --episodes 10 --seed 0 --out docs/results/baseline/probe

Writes one CSV per (dataset, variant, seed): step, normalised score, return mean / std / min / max over
``--episodes`` greedy episodes (env reset seeds 10000 + 1000 * seed + i, as the runner evaluates).
Batches are drawn uniformly from the dataset's transitions (the runner's offline loop). Variants
(see :func:`build`): ``bc`` = d3rlpy BCConfig (deterministic policy, MSE, lr 1e-3, batch 256);
``iql`` = the engine's IQL before this study (runner.iql_kwargs: expectile 0.7, temperature 3,
return-based reward scale 1000, actor lr cosine-decayed over ``--steps``); modifiers joined with
``+``: ``obsnorm`` (observations standardised with the dataset's mean / std, as CORL's IQL),
``ln`` (LayerNorm in critic and value), ``drop`` (actor dropout 0.1, CORL's ``actor_dropout``),
``const`` (constant actor lr), ``tX`` (temperature X: ``t1``; ``t0`` makes every advantage weight
1, i.e. IQL's actor is plain likelihood BC), ``fixstd`` (the policy's std frozen at its initial
0.22 in every dimension), ``alrX`` (actor learning rate X, e.g. ``alr1e-3``).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np


def build(variant: str, family: str, steps: int) -> object:
    """``bc`` or ``iql``, then ``+``-joined modifiers: ``obsnorm`` (standardised observations),
    ``ln`` (LayerNorm in critic and value encoders), ``drop`` (actor dropout 0.1), ``const``
    (constant actor lr), ``tX`` (temperature X, e.g. ``t1``; ``t0``: every advantage weight 1), ``alrX``
    (actor lr X). ``iql_X`` is ``iql+X``."""
    import d3rlpy

    from cfdg_aug.experiments.runner import iql_kwargs

    base, *mods = variant.replace("_", "+").split("+")
    if base == "bc":
        kw: dict = dict(batch_size=256)
        for m in mods:
            if m != "obsnorm":
                raise SystemExit(f"unknown bc modifier {m!r}")
            kw["observation_scaler"] = d3rlpy.preprocessing.StandardObservationScaler()
        return d3rlpy.algos.BCConfig(**kw).create(device="cpu")
    if base != "iql":
        raise SystemExit(f"unknown variant {variant!r}")
    kw = iql_kwargs(family, offline_steps=steps)
    for m in mods:
        if m == "const":
            kw["actor_optim_factory"] = d3rlpy.optimizers.AdamFactory()
        elif m == "obsnorm":
            kw["observation_scaler"] = d3rlpy.preprocessing.StandardObservationScaler()
        elif m == "ln":
            kw["critic_encoder_factory"] = d3rlpy.models.VectorEncoderFactory(use_layer_norm=True)
            kw["value_encoder_factory"] = d3rlpy.models.VectorEncoderFactory(use_layer_norm=True)
        elif m == "drop":
            kw["actor_encoder_factory"] = d3rlpy.models.VectorEncoderFactory(dropout_rate=0.1)
        elif m[:1] == "t" and m[1:].replace(".", "", 1).isdigit():  # temperature, e.g. t1, t0 (= weighted only by 1)
            kw["weight_temp"] = float(m[1:])
        elif m == "fixstd":  # applied after build (main): the policy's std stays at its initial value
            pass
        elif m.startswith("alr"):  # actor learning rate, e.g. alr1e-3 (BC's)
            kw["actor_learning_rate"] = float(m[3:])
        else:
            raise SystemExit(f"unknown iql modifier {m!r}")
    return d3rlpy.algos.IQLConfig(**kw).create(device="cpu")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--eval-every", type=int, default=5_000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/baseline/probe")
    a = p.parse_args()

    import d3rlpy
    import torch
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import env_family, load_dataset, make_env, normalized_score
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_minibatch

    torch.set_num_threads(1)
    d3rlpy.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    ds = load_dataset(a.dataset)
    env_id = ds.env_id
    data = ds.to_transition_batch()
    algo = build(a.variant, env_family(env_id), a.steps)
    buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=data, config=CFDGConfig.small(augmentation="none"))
    build_scalers_with_transition_picker(algo, buf)
    algo.build_with_dataset(buf)
    if "fixstd" in a.variant.replace("_", "+").split("+"):
        # d3rlpy's IQL policy: a state-independent log-std parameter, sigmoid-mapped into [-5, 2]; at
        # its initial value 0 the std is exp(-1.5) = 0.22 in every action dimension. Frozen, the
        # likelihood loss weighs every dimension alike, as BC's mean squared error does.
        algo.impl.modules.policy._logstd.requires_grad_(False)
    env = make_env(env_id)
    rng = np.random.default_rng(np.random.SeedSequence(a.seed, spawn_key=(7,)))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(a.dataset).stem}-{a.variant}-s{a.seed}.csv"
    rows = []
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        algo.update(transition_batch_to_minibatch(data[rng.integers(0, len(data.rew), 256)]))
        if step % a.eval_every == 0:
            rets = []
            for i in range(a.episodes):
                obs, _ = env.reset(seed=10_000 + 1000 * a.seed + i)
                total, done = 0.0, False
                while not done:
                    obs, r, term, trunc, _ = env.step(algo.predict(np.asarray(obs, dtype=np.float32)[None])[0])
                    total += float(r)
                    done = term or trunc
                rets.append(total)
            r = np.asarray(rets)
            row = dict(step=step, score=normalized_score(env_id, float(r.mean())), ret_mean=r.mean(), ret_std=r.std(),
                       ret_min=r.min(), ret_max=r.max(), seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            print(f"{path.stem} step {step}: score {row['score']:.1f} (return {r.mean():.0f} +- {r.std():.0f}, "
                  f"min {r.min():.0f} max {r.max():.0f}) {row['seconds']} s", flush=True)
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                w.writeheader()
                w.writerows(rows)


if __name__ == "__main__":
    main()
