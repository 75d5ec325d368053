"""Which statistic should the behaviour filter threshold, and at which quantile? One fit, many filters.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_behaviour_filter --env hopper
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_behaviour_filter --env walker2d \
        --load /tmp/gen-walker2d.safetensors      # a generator saved by bench_fidelity_budget --save

Task and split: ``bench_fidelity_budget``'s (medium offline, expert online, 10% held out, the
yardstick of ``cfdg-aug fidelity``). The generator is fitted once at the small profile's defaults
(or loaded); then each variant only changes the filter (``behaviour_score``, ``behaviour_quantile``:
:meth:`CFDGGenerator.set_behaviour_thresholds`, same behaviour model) and is scored by
``fidelity_report`` at w = 0 against the held-out rows, so the variants differ in the filter alone.

Variants: ``off`` (no filter), ``<score>:<q>`` for ``score`` in {log_prob, mahalanobis}, and
``log_prob-match:<q>:<bins>``, an experiment kept here and not in the library: instead of a
threshold, the kept rows are stratified so their log-likelihood histogram (``bins`` quantile bins
of the real rows' above the real ``q`` quantile) is the real rows'. It asks whether the filter's
classifier AUC comes from removing the real data's tail of unlikely actions (matching would then
bring it back to the unfiltered value) or from what the likelihood does to the states.

Per variant and label, each the mean over ``--eval-seeds`` evaluations (a fresh sample and
classifier each; the per-seed values are kept): classifier AUC, MMD², next-state physics error
(median); and, once, what the learner's actor would feel, under the behaviour model itself: the median action
log-likelihood of the kept rows against the held-out real rows', and the share below the held-out
real rows' 5% quantile (5% for real data). Rows append to ``benchmarks/results/behaviour_filter.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_fidelity_budget import _commit, task
from cfdg_aug import CFDGConfig, CFDGGenerator
from cfdg_aug.datasets.envs import action_encoding
from cfdg_aug.diagnostics.fidelity import fidelity_report
from cfdg_aug.generator import BEHAVIOUR_MAX_DRAW, LABEL_OFFLINE, LABEL_ONLINE
from cfdg_aug.transitions import TransitionBatch

DEFAULT_VARIANTS = ("off", "log_prob:0.2", "log_prob:0.1", "mahalanobis:0.05", "mahalanobis:0.1",
                    "mahalanobis:0.15", "mahalanobis:0.2", "log_prob-match:0:10")
LABELS = {"online": LABEL_ONLINE, "offline": LABEL_OFFLINE}


def matched(gen: CFDGGenerator, real_lp: np.ndarray, q: float, bins: int
            ) -> Callable[[Callable[[int], TransitionBatch], int, object], TransitionBatch]:
    """A stand-in for the generator's filter: ``n`` rows whose log-likelihood falls into the real
    rows' quantile bins (above the real ``q`` quantile) in equal numbers, drawing up to
    ``BEHAVIOUR_MAX_DRAW * n`` rows; short bins are filled with the likeliest surplus rows."""
    model = gen.behaviour_model
    assert model is not None
    edges = np.quantile(real_lp, q + (1 - q) * np.arange(bins + 1) / bins)
    edges[-1] = np.inf

    def filt(draw: Callable[[int], TransitionBatch], n: int, label: object) -> TransitionBatch:
        lab = LABEL_ONLINE if label == "online" else LABEL_OFFLINE
        target = np.full(bins, n // bins)
        target[: n - target.sum()] += 1
        parts, scores, counts, drawn = [], [], np.zeros(bins, int), 0
        while drawn < BEHAVIOUR_MAX_DRAW * n and (counts < target).any():
            share = np.maximum(counts / max(drawn, 1), 1e-3)
            m = 2 * n if not drawn else int(min(BEHAVIOUR_MAX_DRAW * n - drawn,
                                                max(16, math.ceil(1.1 * np.max((target - counts) / share)))))
            b = draw(m)
            lp = model.log_prob(b.obs, b.act, lab)
            k = np.searchsorted(edges, lp, side="right") - 1
            counts += np.bincount(k[k >= 0], minlength=bins)[:bins]
            parts.append(b)
            scores.append(lp)
            drawn += m
        rows, lp = TransitionBatch.concat(parts), np.concatenate(scores)
        k = np.searchsorted(edges, lp, side="right") - 1
        keep = np.concatenate([np.flatnonzero(k == j)[: target[j]] for j in range(bins)])
        if len(keep) < n:
            rest = np.setdiff1d(np.flatnonzero(k >= 0), keep)
            keep = np.concatenate([keep, rest[np.argsort(-lp[rest])][: n - len(keep)]])
        return rows[np.sort(keep)]

    return filt


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="hopper", choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--load", default=None, help="a generator saved by bench_fidelity_budget --save (else fit one)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="the split's seed (and the fit's)")
    ap.add_argument("--eval-seeds", default="0,1,2,3,4",
                    help="fidelity_report seeds, each a fresh sample and classifier: one evaluation's AUC moves by "
                         "up to 0.06 from the mean of five on the same fit and filter, so a variant is scored by the mean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/behaviour_filter.jsonl")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    env_id, (off_fit, off_h), (on_fit, on_h) = task(a.env, a.seed, a.n)
    fit_info: dict = {"loaded": a.load}
    if a.load:
        gen = CFDGGenerator.load(a.load)
    else:
        gen = CFDGGenerator(off_fit.obs_dim, off_fit.act_dim, CFDGConfig.small(), seed=a.seed, termination=env_id,
                            act_encoding=action_encoding(env_id))
        cpu = time.process_time()
        gen.fit(off_fit, on_fit)
        fit_info["cpu_seconds"] = time.process_time() - cpu
    model = gen.behaviour_model
    assert model is not None, "the generator has no behaviour model (behaviour_quantile=None at its fit)"
    both = TransitionBatch.concat([off_fit, on_fit])
    labels = np.repeat(np.array([LABEL_OFFLINE, LABEL_ONLINE]), [len(off_fit), len(on_fit)])
    fit_rows = {"online": on_fit, "offline": off_fit}
    held = {"online": on_h, "offline": off_h}
    base, plain_filter = gen.config, gen._behaviour_filtered
    rows = []
    for variant in a.variants.split(","):
        kind, *args = variant.split(":")
        gen._behaviour_filtered = plain_filter  # type: ignore[method-assign]
        if kind == "off":
            gen.config = base.replace(behaviour_quantile=None)
        elif kind == "log_prob-match":
            gen.config = base
            filters = {lab: matched(gen, model.log_prob(fit_rows[lab].obs, fit_rows[lab].act, code), float(args[0]),
                                    int(args[1])) for lab, code in LABELS.items()}
            gen._behaviour_filtered = lambda draw, n, label, f=filters: f[str(label)](draw, n, label)  # type: ignore[method-assign,misc]
        else:
            gen.config = base.replace(behaviour_score=kind, behaviour_quantile=float(args[0]))
            gen.set_behaviour_thresholds(both, labels)
        cpu = time.process_time()
        eval_seeds = [int(x) for x in a.eval_seeds.split(",")]
        reps = [fidelity_report(gen, off_h, on_h, env_id=env_id, n=a.n, guidance=0.0, seed=s,
                                physics_n=a.physics_n, per_dimension=False) for s in eval_seeds]
        row: dict = {"commit": _commit(), "env": a.env, "variant": variant, "seed": a.seed, "fit": fit_info,
                     "eval_seeds": eval_seeds, "eval_cpu_seconds": time.process_time() - cpu,
                     "machine": platform.processor() or platform.machine()}
        for lab, code in LABELS.items():
            real_lp = model.log_prob(held[lab].obs, held[lab].act, code)
            kept = gen.sample(4000, "online" if lab == "online" else "offline", guidance=0.0)
            lp = model.log_prob(kept.obs, kept.act, code)
            per_seed = {"auc": [r[lab]["auc"] for r in reps], "mmd2": [r[lab]["mmd2"] for r in reps],
                        "physics_next_state_median": [(r[lab].get("physics") or {}).get("next_state_median")
                                                      for r in reps]}
            row[lab] = {**{k: float(np.mean(v)) for k, v in per_seed.items()},
                        "auc_sd": float(np.std(per_seed["auc"], ddof=1)) if len(reps) > 1 else None,
                        "per_seed": per_seed, "accept_rate": (gen.last_behaviour_stats or {}).get("accept_rate"),
                        "log_prob_median": float(np.median(lp)), "log_prob_median_real": float(np.median(real_lp)),
                        "below_real_q05": float(np.mean(lp < np.quantile(real_lp, 0.05)))}
        rows.append(row)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        on, off = row["online"], row["offline"]
        print(f"{a.env} {variant:20s} online AUC {on['auc']:.3f} (sd {on['auc_sd'] or 0:.3f}) phys {on['physics_next_state_median']:.3g} "
              f"logp {on['log_prob_median']:+.2f} ({on['log_prob_median_real']:+.2f} real) below q05 "
              f"{on['below_real_q05']:.3f} | offline AUC {off['auc']:.3f} phys {off['physics_next_state_median']:.3g} "
              f"below q05 {off['below_real_q05']:.3f}", flush=True)
    gen.config, gen._behaviour_filtered = base, plain_filter  # type: ignore[method-assign]
    return rows


if __name__ == "__main__":
    main()
