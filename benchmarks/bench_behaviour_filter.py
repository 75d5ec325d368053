"""Which statistic should the behaviour filter threshold, and at which quantile? One fit, many filters.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_behaviour_filter --env hopper
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_behaviour_filter --env walker2d \
        --load /tmp/gen-walker2d.safetensors      # a generator saved by bench_fidelity_budget --save

Task and split: ``bench_fidelity_budget``'s (medium offline, expert online, 10% held out, the
yardstick of ``cfdg-aug fidelity``). The generator is fitted once at the small profile's defaults
(or loaded); then each variant only changes the filter (``behaviour_score``, ``behaviour_quantile``:
:meth:`CFDGGenerator.set_behaviour_thresholds`, same behaviour model) and is scored by
``fidelity_report`` at w = 0 against the held-out rows, so the variants differ in the filter alone.

Variants: ``off`` (no filter), ``<score>:<q>`` for ``score`` in {log_prob, mahalanobis}, and two
experiments kept here and not in the library:

- ``log_prob-match:<q>:<bins>``: instead of a threshold, the kept rows are stratified so their
  log-likelihood histogram (``bins`` quantile bins of the real rows' above the real ``q`` quantile)
  is the real rows'. It asks whether the filter's classifier AUC comes from removing the real
  data's tail of unlikely actions (matching would then bring it back to the unfiltered value) or
  from what the likelihood does to the states.
- ``mahalanobis-redraw:<q>:<k>[:<steps>:<resample>]``: a rejected row keeps its generated state and gets a new action
  (with its reward, next state and done) from the same model given that state, up to ``k`` times,
  before the filter replaces it by rejection sampling. Rejection sampling narrows the kept states;
  redrawing would keep them, if the model can draw an action for a given state. It is drawn by
  the replacement method (:func:`inpainted`; the row's ``redraw`` counts the rows rejected at
  first and those a redraw made pass, its ``accept_rate`` is the top-up rejection sampling's), or,
  with ``steps`` and ``resample``, by the library's ``behaviour_redraws`` (RePaint; the row's
  ``behaviour_stats`` counts them: ``redrawn_accepted_rows``).
- ``inpaint-check:<q>``: not a filter. At the held-out REAL states of each label, the share of
  real actions that pass the Mahalanobis filter at ``q``, of actions drawn for those states by
  :func:`inpainted`, and of freshly generated rows: separates a conditional sampler that cannot
  draw a passing action for a state from states that have none. ``inpaint-check:<q>:<steps>:<resample>``
  also scores :func:`repainted` there.
- ``mahalanobis-guide-a:<q>:<w>``: classifier-free guidance of weight ``w`` on the action columns
  alone, D = D(c) + w (D(c) - D(null)) there and D(c) elsewhere, with the filter at ``q``. It asks
  whether pushing the actions toward the label's policy, which raises the filter's acceptance,
  spares the states the narrowing that guidance on every column causes.

``--set FIELD=VALUE`` changes a sampling setting of the loaded or fitted generator (``sampler``,
``num_sample_steps``, ``s_churn``, ...) for every variant.

Where the AUC lives: per label, classifiers on column groups of one 4,000-row sample against the
held-out rows (observation, action, reward, next-state change, and pairs; mean of 3 classifier
seeds), and the smallest ratio of a generated observation dimension's standard deviation to the
real one's (1 = as spread as the data).

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
from cfdg_aug.config import REDRAW_SETTINGS
from cfdg_aug.datasets.envs import action_encoding
from cfdg_aug.diagnostics.fidelity import fidelity_report
from cfdg_aug.diagnostics.stats import classifier_auc
from cfdg_aug.diffusion.edm import SAMPLERS, karras_sigmas
from cfdg_aug.experiments.runner import parse_set
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

    def filt(draw: Callable[[int], TransitionBatch], n: int, label: object,
             redraw: object = None) -> TransitionBatch:  # redraw: the library's, unused here
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


def _given_states(gen: CFDGGenerator, obs: np.ndarray, label: str) -> tuple[torch.Tensor, torch.Tensor, Callable]:
    """(model_dim,) mask of the observation columns, (N, model_dim) rows holding ``obs`` normalised
    there, and the generator's denoiser for ``label`` at w = 0."""
    norm = gen.normalizer
    assert norm is not None
    cols = gen.layout.obs
    mask = torch.zeros(gen.model_dim, dtype=torch.bool, device=gen.device)
    mask[cols] = True
    known = torch.zeros(len(obs), gen.model_dim, device=gen.device)
    known[:, cols] = torch.from_numpy((obs - norm.mean[cols]) / norm.std[cols]).float().to(gen.device)
    return mask, known, gen._denoise_fn(label, 0.0, gen.sampling_dtype)


@torch.inference_mode()
def inpainted(gen: CFDGGenerator, obs: np.ndarray, label: str) -> TransitionBatch:
    """New rows for the given (N, obs_dim) states: the generator's own sampler with the observation
    columns replaced at every evaluation by their values (the replacement method of conditional
    sampling, Song et al. 2021, "Score-Based Generative Modeling through SDEs", Appendix I.2). Started
    at ``obs + sigma_max * eps`` in those columns, every update of the samplers keeps them at
    ``obs + sigma * eps``, so the network sees them at the step's noise level and draws the rest."""
    cfg = gen.config
    mask, known, denoise = _given_states(gen, obs, label)

    def denoise_known(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, known, denoise(x, sigma))

    noise = torch.randn((len(obs), gen.model_dim), generator=gen._rng, device=gen.device)
    noise = torch.where(mask, noise + known / cfg.sigma_max, noise)
    sigmas = karras_sigmas(cfg.num_sample_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, device=gen.device)
    x = SAMPLERS[cfg.sampler](denoise_known, noise, sigmas, s_churn=cfg.s_churn, s_tmin=cfg.s_tmin,
                              s_tmax=cfg.s_tmax, s_noise=cfg.s_noise, generator=gen._rng)
    return gen.postprocess(x.float().cpu().numpy())


def repainted(gen: CFDGGenerator, obs: np.ndarray, label: str, steps: int, resample: int) -> TransitionBatch:
    """Like :func:`inpainted`, by the library's RePaint (``sample_normalized(given_obs=...)``, what
    ``behaviour_redraws`` uses) at ``steps`` noise levels and ``resample`` evaluations each."""
    config = gen.config
    gen.config = config.replace(redraw_steps=steps, redraw_resample=resample)
    try:
        return gen.postprocess(gen.sample_normalized(len(obs), label, guidance=0.0, given_obs=obs))
    finally:
        gen.config = config


def redrawn(gen: CFDGGenerator, redraws: int, plain_filter: Callable[..., TransitionBatch], stats: dict[str, int]
            ) -> Callable[[Callable[[int], TransitionBatch], int, object], TransitionBatch]:
    """A stand-in for the generator's filter with ``behaviour_redraws``, redrawing by replacement
    (:func:`inpainted`) instead of RePaint: ``n`` rows drawn once; each rejected row's action is
    redrawn for its state up to ``redraws`` times; the rows still rejected are replaced by the
    generator's own rejection sampling (``plain_filter``). ``stats`` counts the rows rejected at
    first and those a redraw made pass."""
    def filt(draw: Callable[[int], TransitionBatch], n: int, label: object,
             redraw: object = None) -> TransitionBatch:  # redraw: the library's, unused here
        key = str(label)
        threshold, code = gen.behaviour_thresholds[key], LABELS[key]
        rows, parts = draw(n), []
        for attempt in range(redraws + 1):
            if attempt:
                rows = inpainted(gen, rows.obs, key)
            ok = gen._behaviour_scores(rows.obs, rows.act, code) >= threshold
            stats["rejected" if not attempt else "redrawn_passed"] += int((~ok).sum() if not attempt else ok.sum())
            parts.append(rows[ok])
            rows = rows[~ok]
            if not len(rows):
                break
        if len(rows):
            parts.append(plain_filter(draw, len(rows), label))
        # Shuffled: the terminal-rate matching keeps the first terminal rows it meets, which would
        # otherwise always be first-pass rows.
        kept = TransitionBatch.concat(parts)
        return kept[np.random.default_rng(len(kept)).permutation(len(kept))]

    return filt


def action_guided(gen: CFDGGenerator, w: float) -> Callable[..., object]:
    """A stand-in for ``gen._denoise_fn``: guidance of weight ``w`` on the action columns only (the
    weight asked for is ignored: the benchmark scores at w = 0 everywhere else)."""
    plain = gen._denoise_fn
    mask = torch.zeros(gen.model_dim)
    mask[gen.layout.act] = 1.0

    def denoise_fn(label: object, _w: float, precision: str = "float32", compile: bool = False) -> object:
        cond = plain(label, 0.0, precision, compile)
        if label is None:
            return cond
        null = plain(None, 0.0, precision, compile)

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            d_cond = cond(x, sigma)
            return d_cond + w * mask * (d_cond - null(x, sigma))

        return guided

    return denoise_fn


COLUMN_GROUPS = ("s", "a", "r", "s'-s", "s,a", "s,a,r,s'-s")


def where_the_auc_lives(real: TransitionBatch, generated: TransitionBatch, seeds: int = 3) -> dict[str, float]:
    """Classifier AUC of ``generated`` against ``real`` on each of :data:`COLUMN_GROUPS` (mean over
    ``seeds`` classifiers), and ``obs_std_ratio_min``: the smallest generated / real standard
    deviation over the observation dimensions."""
    def cols(b: TransitionBatch) -> dict[str, np.ndarray]:
        one = {"s": b.obs, "a": b.act, "r": b.rew.reshape(-1, 1), "s'-s": b.next_obs - b.obs}
        return {**one, "s,a": np.hstack([b.obs, b.act]), "s,a,r,s'-s": np.hstack(list(one.values()))}

    r, g = cols(real), cols(generated)
    out = {k: float(np.mean([classifier_auc(r[k], g[k], seed=s)["auc"] for s in range(seeds)])) for k in COLUMN_GROUPS}
    out["obs_std_ratio_min"] = float((generated.obs.std(0) / real.obs.std(0)).min())
    return out


def inpaint_check(gen: CFDGGenerator, config: CFDGConfig, both: TransitionBatch, labels: np.ndarray,
                  held: dict[str, TransitionBatch], out: str, row: dict,
                  repaint: tuple[int, int] | None = None) -> dict:
    """The ``inpaint-check`` variant (module docstring): pass rates at the held-out real states."""
    gen.config = config
    gen.set_behaviour_thresholds(both, labels)
    row = {"commit": _commit(), **row, "machine": platform.processor() or platform.machine()}
    for lab, code in LABELS.items():
        real = held[lab]

        def passes(b: TransitionBatch, lab: str = lab, code: int = code) -> float:
            return float(np.mean(gen._behaviour_scores(b.obs, b.act, code) >= gen.behaviour_thresholds[lab]))

        raw = gen.postprocess(gen.sample_normalized(len(real), lab, guidance=0.0))
        row[lab] = {"real": passes(real), "inpainted_at_real_states": passes(inpainted(gen, real.obs, lab)),
                    "generated": passes(raw), "n": len(real)}
        if repaint is not None:
            row[lab]["repainted_at_real_states"] = passes(repainted(gen, real.obs, lab, *repaint))
            print(f"{row['env']} {row['variant']} {lab:7s} RePaint {repaint}: "
                  f"{row[lab]['repainted_at_real_states']:.3f}", flush=True)
        print(f"{row['env']} {row['variant']} {lab:7s} pass rate: real {row[lab]['real']:.3f}, actions drawn for the "
              f"real states {row[lab]['inpainted_at_real_states']:.3f}, generated rows {row[lab]['generated']:.3f}",
              flush=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


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
    ap.add_argument("--set", dest="set_", action="append", default=[],
                    help="FIELD=VALUE: a sampling setting of the generator (sampler, num_sample_steps, s_churn, ...)")
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
    sampling = parse_set(a.set_)
    saved_config, saved_thresholds = gen.config, dict(gen.behaviour_thresholds)
    # every variant filters by rejection alone unless it says otherwise (the small profile redraws
    # since 2026-12-02; the committed rows were made without)
    base = gen.config.replace(**{"behaviour_redraws": 0, **sampling})
    plain_filter, plain_denoise_fn = gen._behaviour_filtered, gen._denoise_fn
    rows = []
    for variant in a.variants.split(","):
        kind, *args = variant.split(":")
        gen._behaviour_filtered, gen._denoise_fn = plain_filter, plain_denoise_fn  # type: ignore[method-assign]
        if kind == "inpaint-check":
            rows.append(inpaint_check(gen, base.replace(behaviour_score="mahalanobis", behaviour_quantile=float(args[0])),
                                      both, labels, held, a.out, {"env": a.env, "variant": variant, "seed": a.seed,
                                                                  "fit": fit_info, "sampling": sampling},
                                      (int(args[1]), int(args[2])) if len(args) > 1 else None))
            continue
        redraw_stats: dict[str, int] = {}
        if kind == "off":  # (the statistic is refused without a filter; a loaded generator may hold "log_prob")
            gen.config = base.replace(behaviour_score="mahalanobis", behaviour_quantile=None, behaviour_redraws=0)
        elif kind == "mahalanobis-redraw" and len(args) > 2:  # the library's redraws (RePaint)
            gen.config = base.replace(behaviour_score="mahalanobis", behaviour_quantile=float(args[0]),
                                      behaviour_redraws=int(args[1]), redraw_steps=int(args[2]),
                                      redraw_resample=int(args[3]))
            gen.set_behaviour_thresholds(both, labels)
        elif kind == "mahalanobis-redraw":
            gen.config = base.replace(behaviour_score="mahalanobis", behaviour_quantile=float(args[0]))
            gen.set_behaviour_thresholds(both, labels)
            redraw_stats.update(rejected=0, redrawn_passed=0)
            gen._behaviour_filtered = redrawn(gen, int(args[1]), plain_filter, redraw_stats)  # type: ignore[method-assign]
        elif kind == "mahalanobis-guide-a":
            gen.config = base.replace(behaviour_score="mahalanobis", behaviour_quantile=float(args[0]))
            gen.set_behaviour_thresholds(both, labels)
            gen._denoise_fn = action_guided(gen, float(args[1]))  # type: ignore[method-assign]
        elif kind == "log_prob-match":
            gen.config = base
            filters = {lab: matched(gen, model.log_prob(fit_rows[lab].obs, fit_rows[lab].act, code), float(args[0]),
                                    int(args[1])) for lab, code in LABELS.items()}
            gen._behaviour_filtered = lambda draw, n, label, redraw=None, f=filters: f[str(label)](draw, n, label)  # type: ignore[method-assign,misc]
        else:
            gen.config = base.replace(behaviour_score=kind, behaviour_quantile=float(args[0]))
            gen.set_behaviour_thresholds(both, labels)
        cpu = time.process_time()
        eval_seeds = [int(x) for x in a.eval_seeds.split(",")]
        reps = [fidelity_report(gen, off_h, on_h, env_id=env_id, n=a.n, guidance=0.0, seed=s,
                                physics_n=a.physics_n, per_dimension=False) for s in eval_seeds]
        row: dict = {"commit": _commit(), "env": a.env, "variant": variant, "seed": a.seed, "fit": fit_info,
                     "sampling": sampling,
                     # what the loaded generator's config made of the settings not overridden
                     "redraw_settings": {k: getattr(gen.config, k) for k in REDRAW_SETTINGS},
                     "eval_seeds": eval_seeds, "eval_cpu_seconds": time.process_time() - cpu,
                     "machine": platform.processor() or platform.machine()}
        for lab, code in LABELS.items():
            real_lp = model.log_prob(held[lab].obs, held[lab].act, code)
            if redraw_stats:  # counted for this sample alone
                redraw_stats.update(rejected=0, redrawn_passed=0)
            kept = gen.sample(4000, lab, guidance=0.0)
            lp = model.log_prob(kept.obs, kept.act, code)
            per_seed = {"auc": [r[lab]["auc"] for r in reps], "mmd2": [r[lab]["mmd2"] for r in reps],
                        "physics_next_state_median": [(r[lab].get("physics") or {}).get("next_state_median")
                                                      for r in reps]}
            row[lab] = {**{k: float(np.mean(v)) for k, v in per_seed.items()},
                        "auc_sd": float(np.std(per_seed["auc"], ddof=1)) if len(reps) > 1 else None,
                        "per_seed": per_seed, "accept_rate": (gen.last_behaviour_stats or {}).get("accept_rate"),
                        "behaviour_stats": gen.last_behaviour_stats,
                        "log_prob_median": float(np.median(lp)), "log_prob_median_real": float(np.median(real_lp)),
                        "below_real_q05": float(np.mean(lp < np.quantile(real_lp, 0.05))),
                        "redraw": dict(redraw_stats) or None, "columns": where_the_auc_lives(held[lab], kept)}
        rows.append(row)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        on, off = row["online"], row["offline"]
        print(f"{a.env} {variant:20s} online AUC {on['auc']:.3f} (sd {on['auc_sd'] or 0:.3f}) phys {on['physics_next_state_median']:.3g} "
              f"logp {on['log_prob_median']:+.2f} ({on['log_prob_median_real']:+.2f} real) below q05 "
              f"{on['below_real_q05']:.3f} | offline AUC {off['auc']:.3f} phys {off['physics_next_state_median']:.3g} "
              f"below q05 {off['below_real_q05']:.3f}", flush=True)
        for lab in LABELS:
            c = row[lab]["columns"]
            print(f"    {lab:7s} AUC by columns: " + ", ".join(f"{k} {c[k]:.3f}" for k in COLUMN_GROUPS)
                  + f"; smallest obs std ratio {c['obs_std_ratio_min']:.2f}; redraw {row[lab]['redraw']}", flush=True)
    gen.config, gen._behaviour_filtered, gen._denoise_fn = saved_config, plain_filter, plain_denoise_fn  # type: ignore[method-assign]
    gen.behaviour_thresholds = saved_thresholds
    return rows


if __name__ == "__main__":
    main()
