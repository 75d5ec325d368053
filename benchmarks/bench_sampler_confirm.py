"""Confirm the few-step sampler on generators of the current representation (s' from the dynamics
model, terminals by the env's rule, w = 0).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sampler_confirm --env hopper --generator G.safetensors \
        [--seeds 3 4 5] [--n 3000] [--terminal-n 20000] >> benchmarks/results/bench_sampler_confirm.jsonl

``benchmarks/bench_sampler.py`` chose DPM-Solver++(2M) with 10 steps (sigma 20 .. 0.06) on
generators that diffused the whole transition. This re-checks the choice where the default now
samples: one saved generator (``benchmarks.bench_fidelity_budget --save``, same data split, read
with ``CFDGGenerator.load``) samples ``--terminal-n`` rows per label and noise seed through
``CFDGGenerator.sample`` (dynamics model, termination, terminal-rate matching, projection: what a
buffer gets) with each solver; the first ``--n`` rows are scored against held-out real rows of the
label (classifier AUC, MMD², mean W1, MuJoCo next-state error), the terminal rate over all of them.
One JSON row per (solver, seed, label), with the sampling CPU-seconds (``time.process_time``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.bench_fidelity_budget import task
from cfdg_aug import CFDGGenerator
from cfdg_aug.diagnostics.fidelity import compare
from cfdg_aug.diagnostics.physics import noise_floor, physics_error

SOLVERS = {
    "heun:32": dict(sampler="heun", num_sample_steps=32, sigma_max=80.0, sigma_min=0.002),
    "dpmpp_2m:10:sigma_max=20:sigma_min=0.06": dict(sampler="dpmpp_2m", num_sample_steps=10, sigma_max=20.0,
                                                    sigma_min=0.06),
    "dpmpp_2m:8:sigma_max=20:sigma_min=0.06": dict(sampler="dpmpp_2m", num_sample_steps=8, sigma_max=20.0,
                                                   sigma_min=0.06),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, choices=["hopper", "walker2d", "halfcheetah"])
    ap.add_argument("--generator", required=True, help="a saved generator fitted on the same split")
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--terminal-n", type=int, default=20000)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    env_id, off, on = task(args.env, args.split_seed, args.n)
    gen = CFDGGenerator.load(args.generator)
    base = gen.config
    floor = noise_floor(on[1], env_id, max_transitions=1000)
    for seed in args.seeds:
        for name, kw in SOLVERS.items():
            gen.config = base.replace(**kw)
            gen._rng.manual_seed(seed)  # the same noise for every solver
            for label, real in (("online", on[1]), ("offline", off[1])):
                t = time.process_time()
                batch = gen.sample(args.terminal_n, label, guidance=0.0)
                cpu = time.process_time() - t
                head = batch[: args.n]
                c = compare(real, head, seed=seed, per_dimension=False)
                ph = physics_error(head, env_id, max_transitions=1000, floor=floor)
                print(json.dumps(dict(env=args.env, generator=args.generator, solver=name, seed=seed, label=label,
                                      auc=c["auc"], mmd2=c["mmd2"], w1_mean=c["w1_mean"],
                                      physics_next_state_median=ph["next_state_median"],
                                      terminal_rate=float(batch.done.mean()), sample_cpu_s=cpu)), flush=True)


if __name__ == "__main__":
    main()
