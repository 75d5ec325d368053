"""Fidelity of CFDG online samples vs unconditional (SynthER-style) samples at equal training budget.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_fidelity [--steps 3000] [--envs hopper walker2d]

Data (../shared/datasets, real MuJoCo physics, see its README):
- "offline" = the first episodes of ``<env>-medium-50k`` up to ~25,000 transitions (whole episodes);
- pseudo-"online" = the first episodes of ``<env>-expert-50k`` up to ~10,000 transitions: a better
  policy's data, i.e. the shift online fine-tuning produces;
- held out (never trained on): from the rest of each file, two disjoint random sets per kind: one
  to choose w by the auto rule, one for the final scores (so the chosen w is not scored on the
  rows that chose it).

Both generators get the same network (small profile: width 256, depth 3, 32 Heun steps) and the
same number of gradient steps on the same offline + online data; CFDG trains with labels, the
unconditional model without. Reported per env: the two-sample classifier AUC and MMD^2 of the
generated online(-like) samples against held-out real online data, and their physics error
(re-simulation from the observation; median / p90 of next-state and reward errors, fraction below
1e-2 and within the real data's noise floor). CFDG is shown at w = 0, 1 and at the auto-chosen w.
Ratios CFDG / unconditional are computed within this run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import write_result
from cfdg_aug.config import CFDGConfig
from cfdg_aug.datasets import load_d4rl
from cfdg_aug.diagnostics import choose_guidance, compare, noise_floor, physics_error
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.transitions import TransitionBatch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ENV_IDS = {"hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}
CANDIDATES = (0.0, 0.5, 1.0, 2.0, 4.0)


def split_by_episodes(path: Path, n_train: int) -> tuple[TransitionBatch, TransitionBatch]:
    """(whole episodes from the start up to about n_train rows, the remaining rows)."""
    ds = load_d4rl(path)
    end = 0
    for sl in ds.episodes():
        if sl.stop > n_train and end > 0:
            break
        end = sl.stop
    b = ds.to_transition_batch()
    return b[:end], b[end:]


def heldout_pair(rest: TransitionBatch, n: int, rng: np.random.Generator) -> tuple[TransitionBatch, TransitionBatch]:
    idx = rng.permutation(len(rest))[: 2 * n]
    return rest[np.sort(idx[:n])], rest[np.sort(idx[n:])]


def score(gen_batch: TransitionBatch, real: TransitionBatch, env_id: str, floor: dict[str, float],
          physics_n: int, seed: int) -> dict[str, Any]:
    c = compare(real, gen_batch, seed=seed, per_dimension=False)
    ph = physics_error(gen_batch, env_id, max_transitions=physics_n, floor=floor)
    return {"auc": c["auc"], "mmd2": c["mmd2"], "w1_mean": c["w1_mean"], "done_rate": c["done_rate_generated"],
            **{f"physics_{k}": v for k, v in ph.items() if not k.startswith("floor_")}}


def run_env(env: str, steps: int, n: int, physics_n: int, seed: int) -> dict[str, Any]:
    env_id = ENV_IDS[env]
    rng = np.random.default_rng(seed)
    off, off_rest = split_by_episodes(SHARED / f"{env}-medium-50k.hdf5", 25_000)
    on, on_rest = split_by_episodes(SHARED / f"{env}-expert-50k.hdf5", 10_000)
    off_sel, off_eval = heldout_pair(off_rest, n, rng)
    on_sel, on_eval = heldout_pair(on_rest, n, rng)
    floor = noise_floor(on_eval, env_id, max_transitions=physics_n)
    cfg = CFDGConfig.small(train_steps=steps)
    obs_dim, act_dim = off.obs_dim, off.act_dim
    out: dict[str, Any] = {"env_id": env_id, "n_offline": len(off), "n_online": len(on), "steps": steps,
                           "n_eval": n, "noise_floor": floor}

    t = time.perf_counter()
    cfdg = CFDGGenerator(obs_dim, act_dim, cfg, seed=seed)
    fit_c = cfdg.fit(off, on, progress=True)
    out["cfdg_fit_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    unc = CFDGGenerator(obs_dim, act_dim, cfg.replace(augmentation="unconditional"), seed=seed)
    fit_u = unc.fit(off, on, progress=True)
    out["unconditional_fit_seconds"] = time.perf_counter() - t
    out["final_loss"] = {"cfdg": fit_c.final_loss, "unconditional": fit_u.final_loss}

    t = time.perf_counter()
    w_auto, rows = choose_guidance(cfdg, off_sel, on_sel, CANDIDATES, n=n, seed=seed)
    out["auto"] = {"chosen": w_auto, "rows": rows, "seconds": time.perf_counter() - t}

    res: dict[str, Any] = {}
    for name, w in (("cfdg_w0", 0.0), ("cfdg_w1", 1.0), ("cfdg_auto", w_auto)):
        online_like = cfdg.sample(n, "online", guidance=w)
        res[name] = {"guidance": w, **score(online_like, on_eval, env_id, floor, physics_n, seed)}
    res["unconditional"] = score(unc.sample(n, None), on_eval, env_id, floor, physics_n, seed)
    # Reference rows: real held-out data scored the same way (what "perfect" looks like), and the
    # offline-labelled CFDG samples against held-out offline data.
    res["real_online_heldout"] = score(on_sel, on_eval, env_id, floor, physics_n, seed)
    res["cfdg_offline_label_w1_vs_offline"] = score(cfdg.sample(n, "offline", guidance=1.0), off_eval, env_id, floor,
                                                    physics_n, seed)
    out["results"] = res
    u = res["unconditional"]
    out["ratios_vs_unconditional"] = {
        name: {"auc_distance": abs(r["auc"] - 0.5) / max(abs(u["auc"] - 0.5), 1e-9),
               "mmd2": r["mmd2"] / u["mmd2"] if u["mmd2"] > 0 else float("nan"),
               "physics_next_state_median": r["physics_next_state_median"] / u["physics_next_state_median"]}
        for name, r in res.items() if name.startswith("cfdg_") and "offline" not in name
    }
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| env | samples | w | AUC vs held-out online | MMD² | next-state err median / p90 | reward err median / p90 | frac next-state err ≤ 1e-2 | within floor |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for env, r in results.items():
        for name, s in r["results"].items():
            lines.append(
                f"| {env} | {name} | {s.get('guidance', '')} | {s['auc']:.3f} | {s['mmd2']:.4f} | "
                f"{s['physics_next_state_median']:.3g} / {s['physics_next_state_p90']:.3g} | "
                f"{s['physics_reward_median']:.3g} / {s['physics_reward_p90']:.3g} | "
                f"{s['physics_frac_next_state_below_0.01']:.3f} | {s['physics_frac_within_floor']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="gradient steps for each generator (equal budget)")
    ap.add_argument("--envs", nargs="+", default=["hopper", "walker2d"], choices=sorted(ENV_IDS))
    ap.add_argument("--n", type=int, default=1500, help="generated / held-out transitions per comparison")
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    results = {env: run_env(env, a.steps, a.n, a.physics_n, a.seed) for env in a.envs}
    print(table(results))
    for env, r in results.items():
        print(f"{env}: auto-chosen w = {r['auto']['chosen']}; ratios vs unconditional: {r['ratios_vs_unconditional']}")
    path = write_result("bench_fidelity", {"params": vars(a), "results": results, "table_markdown": table(results)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
