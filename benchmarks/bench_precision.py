"""Does sampling in bfloat16, or compiled, change what the generator produces? Fidelity vs float32.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_precision [--steps 6000] [--envs hopper walker2d]

One small-profile CFDG generator per env is fitted once (float32 training, the data split of
``bench_fidelity``: medium data as offline, expert data as pseudo-online, scores on held-out rows
it never saw). Then, for each sampling seed, the SAME model samples from the SAME initial noise (one
sampler chunk of n rows) in float32, in bfloat16 (``sampling_precision``) and in bfloat16 compiled
(``sampling_compile``), and every set is scored the same way:
two-sample classifier AUC and MMD^2 against held-out real data of the label asked for, and the physics
error of re-simulating the transitions in MuJoCo.

The question is whether the fast variants move any figure by more than float32 itself moves between
sampling seeds; reported per metric: mean over seeds for each variant, the float32 seed-to-seed
standard deviation, and |mean variant - mean fp32| / that std. Also the paired distance between each
variant's samples and float32's in normalised units (data std = 1), and the sampling time of each
variant in the same run (the compiled one's includes compiling once).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks._common import write_result
from benchmarks.bench_fidelity import ENV_IDS, SHARED, heldout_pair, score, split_by_episodes
from cfdg_aug.config import CFDGConfig
from cfdg_aug.diagnostics import noise_floor
from cfdg_aug.diagnostics.fidelity import _seeded
from cfdg_aug.generator import CFDGGenerator

# variant -> (precision, compile); the first is the reference.
VARIANTS = {"float32": ("float32", False), "bfloat16": ("bfloat16", False), "bfloat16_compiled": ("bfloat16", True)}
FAST = [v for v in VARIANTS if v != "float32"]
METRICS = ("auc", "mmd2", "w1_mean", "done_rate", "physics_next_state_median", "physics_reward_median",
           "physics_frac_within_floor")


def run_env(env: str, steps: int, n: int, physics_n: int, seeds: list[int], guidance: float) -> dict[str, Any]:
    env_id = ENV_IDS[env]
    rng = np.random.default_rng(0)
    off, off_rest = split_by_episodes(SHARED / f"{env}-medium-50k.hdf5", 25_000)
    on, on_rest = split_by_episodes(SHARED / f"{env}-expert-50k.hdf5", 10_000)
    off_eval, _ = heldout_pair(off_rest, n, rng)
    on_eval, _ = heldout_pair(on_rest, n, rng)
    real = {"online": on_eval, "offline": off_eval}
    floor = noise_floor(on_eval, env_id, max_transitions=physics_n)
    gen = CFDGGenerator(off.obs_dim, off.act_dim, CFDGConfig.small(train_steps=steps), seed=0)
    gen.fit(off, on, progress=True)

    rows: list[dict[str, Any]] = []
    paired: dict[str, dict[str, list[float]]] = {v: {"online": [], "offline": []} for v in FAST}
    seconds = {v: 0.0 for v in VARIANTS}
    for seed in seeds:
        for label in ("online", "offline"):
            z = {}
            for v, (precision, compile) in VARIANTS.items():
                with _seeded(gen, 1000 + seed):
                    t = time.perf_counter()
                    z[v] = gen.sample_normalized(n, label, guidance=guidance, batch_size=n, precision=precision,
                                                 compile=compile)
                    seconds[v] += time.perf_counter() - t
                s = score(gen.postprocess(z[v]), real[label], env_id, floor, physics_n, seed)
                rows.append({"label": label, "variant": v, "seed": seed, **s})
            for v in FAST:
                paired[v][label].append(float(np.abs(z[v] - z["float32"]).mean()))

    summary: dict[str, Any] = {}
    for label in ("online", "offline"):
        for m in METRICS:
            vals = {v: np.array([r[m] for r in rows if r["label"] == label and r["variant"] == v]) for v in VARIANTS}
            sd = float(vals["float32"].std(ddof=1)) if len(seeds) > 1 else float("nan")
            entry: dict[str, float] = {v: float(x.mean()) for v, x in vals.items()}
            entry["fp32_seed_std"] = sd
            for v in FAST:
                diff = float(vals[v].mean() - vals["float32"].mean())
                entry[f"{v}_diff_over_seed_std"] = abs(diff) / sd if sd > 0 else float("nan")
            summary[f"{label}/{m}"] = entry
        for v in FAST:
            summary[f"{label}/{v}_paired_mean_abs_diff"] = float(np.mean(paired[v][label]))
    return {"env_id": env_id, "steps": steps, "n": n, "seeds": seeds, "guidance": guidance, "rows": rows,
            "summary": summary, "sampling_seconds": seconds,
            "speedup": {v: seconds["float32"] / seconds[v] for v in FAST}}


def table(results: dict[str, Any]) -> str:
    lines = ["| env | label | metric | float32 (mean over seeds) | bfloat16 | bfloat16 compiled | fp32 seed-to-seed std "
             "| abs(diff) / std, bf16 | abs(diff) / std, bf16 compiled |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for env, r in results.items():
        for key, s in r["summary"].items():
            if isinstance(s, dict):
                label, m = key.split("/")
                lines.append(f"| {env} | {label} | {m} | {s['float32']:.4g} | {s['bfloat16']:.4g} | "
                             f"{s['bfloat16_compiled']:.4g} | {s['fp32_seed_std']:.3g} | "
                             f"{s['bfloat16_diff_over_seed_std']:.2f} | {s['bfloat16_compiled_diff_over_seed_std']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6000, help="generator gradient steps (small profile: 6000)")
    ap.add_argument("--envs", nargs="+", default=["hopper", "walker2d"], choices=sorted(ENV_IDS))
    ap.add_argument("--n", type=int, default=1500, help="generated / held-out transitions per comparison")
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=4, help="sampling seeds")
    ap.add_argument("--guidance", type=float, default=1.0)
    a = ap.parse_args()
    results = {env: run_env(env, a.steps, a.n, a.physics_n, list(range(a.seeds)), a.guidance) for env in a.envs}
    print(table(results))
    for env, r in results.items():
        for v in FAST:
            print(f"{env}: {v}: paired mean |{v} - float32| (normalised units) online "
                  f"{r['summary'][f'online/{v}_paired_mean_abs_diff']:.4f}, offline "
                  f"{r['summary'][f'offline/{v}_paired_mean_abs_diff']:.4f}; sampling {r['speedup'][v]:.2f}x float32's speed")
    path = write_result("bench_precision", {"params": vars(a), "results": results, "table_markdown": table(results)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
