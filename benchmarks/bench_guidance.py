"""Does classifier-free guidance help? Fidelity of one fitted generator across guidance settings.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_guidance --env hopper \
        --generator /tmp/h.safetensors --out benchmarks/results/bench_guidance.jsonl

The generator is one saved by ``benchmarks.bench_fidelity_budget --save`` (same task, same split
and seed, so the held-out rows are unseen by it). For each guidance weight w and each interval of
noise levels where guidance applies (``CFDGConfig.guidance_interval``; None = every level), the
online- and offline-labelled samples are scored against the held-out rows (AUC, MMD², physics
error), all from the same initial noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.bench_fidelity_budget import task
from cfdg_aug import CFDGGenerator
from cfdg_aug.diagnostics.fidelity import fidelity_report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="hopper")
    ap.add_argument("--generator", required=True)
    ap.add_argument("--w", default="0,0.5,1,2")
    ap.add_argument("--intervals", default="none,0.1:2,0.3:5", help="comma-separated LO:HI or none")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--online-n", type=int, default=None, help="as the generator was fitted (bench_fidelity_budget)")
    ap.add_argument("--out", default="benchmarks/results/bench_guidance.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    env_id, (_, off_h), (_, on_h) = task(a.env, a.seed, a.n, a.online_n)
    gen = CFDGGenerator.load(a.generator)
    intervals = [None if s == "none" else tuple(float(v) for v in s.split(":")) for s in a.intervals.split(",")]
    rows = []
    for interval in intervals:
        gen.config = gen.config.replace(guidance_interval=interval)
        for w in (float(v) for v in a.w.split(",")):
            if w == 0 and interval is not None:
                continue  # w = 0 is the same everywhere
            rep = fidelity_report(gen, off_h, on_h, env_id=env_id, n=a.n, guidance=w, seed=a.seed,
                                  physics_n=a.physics_n, per_dimension=False)
            row = {"env": a.env, "generator": a.generator, "online_n": a.online_n, "w": w, "interval": interval}
            for lab in ("online", "offline"):
                sec, ph = rep[lab], rep[lab].get("physics") or {}
                row[lab] = {"auc": sec["auc"], "mmd2": sec["mmd2"], "physics": ph.get("next_state_median")}
            rows.append(row)
            print(f"w={w} interval={interval}: online AUC {row['online']['auc']:.3f} MMD2 {row['online']['mmd2']:.4f} "
                  f"phys {row['online']['physics']:.3g} | offline AUC {row['offline']['auc']:.3f} "
                  f"MMD2 {row['offline']['mmd2']:.4f} phys {row['offline']['physics']:.3g}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
