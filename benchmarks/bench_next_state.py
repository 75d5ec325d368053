"""How precise must a generated next state be, and how precise can a learned one get?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_next_state --env walker2d
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_next_state --env walker2d --no-sensitivity \
        --steps 20000 --width 512 --tag w512

Measurements on real data (../shared/datasets), physics error as ``cfdg-aug fidelity`` reports
it (median over transitions of the largest relative next-state error, |pred - true| / max(|true|, 1)):

1. **Sensitivity**: real (s, a) with their real s' perturbed by ``f`` x the per-dimension std of
   s' - s (f = 1%, 3%, 10%), re-simulated in MuJoCo: what error a generator's imprecision of that
   size shows.
2. **Regression**: a dynamics model of ``next_obs_target="model"``'s shape
   (:class:`cfdg_aug.dynamics.DynamicsModel`; default 3 x 256 SiLU MLP, batch 256, lr 1e-3 cosine,
   MSE on standardised s' - s, i.e. what the generator fits) fitted for each ``--steps`` on
   medium + expert transitions and evaluated on 2,000 held-out REAL (s, a): the best a learned s'
   of that size and budget does, before any generated (s, a) enter. Two errors: ``physics_median``
   (MuJoCo re-simulation of ``--physics-n`` of them) and ``data_median`` (against the rows' own
   s', exact up to float32 rounding, on all 2,000; the same quantity with less sampling noise),
   plus how often each observation dimension is the largest error. ``--loss`` tries other
   losses with the same loop: ``relative`` weights each dimension's error by std(s' - s) /
   max(|s'|, 1), the physics error's own scale (per row; weights normalised to unit RMS);
   ``huber``: smooth L1 with beta 0.1 in standardised units.
3. **Ensemble** (``--ensemble K``, K > 1): K such models fitted from seeds 0..K-1, scored by their
   mean prediction (MBPO instead samples one member per step; ``final_loss`` is then the members'
   mean) and by how far their disagreement (largest over dimensions of the
   members' std / max(|mean|, 1), the physics error's scale) ranks the error: the error of the
   rows kept when only the least-disputed fraction q is kept, for q in ``KEEP_FRACTIONS`` (what an
   uncertainty filter on generated rows, as MOReL drops them, could reach at best on real rows),
   and the real terminal rate of the rows kept.

Results append to ``benchmarks/results/bench_next_state.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cfdg_aug._fit import fit_cosine_adam
from cfdg_aug.datasets import load_dataset
from cfdg_aug.diagnostics.physics import physics_error
from cfdg_aug.dynamics import DynamicsModel
from cfdg_aug.transitions import TransitionBatch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
KEEP_FRACTIONS = (0.9, 0.7, 0.5, 0.3)


def relative_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per row and dimension, ``|pred - true| / max(|true|, 1)`` (the physics check's scale)."""
    return np.abs(pred - true) / np.maximum(np.abs(true), 1.0)


def fit(model: DynamicsModel, train: TransitionBatch, *, steps: int, batch: int, lr: float, loss: str,
        generator: torch.Generator) -> float:
    """``DynamicsModel.fit`` for ``loss="mse"``; the same standardisation and loop with another loss."""
    if loss == "mse":
        return model.fit(train.obs, train.act, train.next_obs, steps=steps, generator=generator,
                         batch_size=batch, lr=lr)
    model.fit(train.obs, train.act, train.next_obs, steps=0, generator=generator)  # standardisation only
    x = torch.from_numpy(np.concatenate([train.obs, train.act], axis=1).astype(np.float32))
    y = torch.from_numpy((train.next_obs - train.obs).astype(np.float32))
    xs, ys = (x - model.x_mean) / model.x_std, (y - model.y_mean) / model.y_std
    scale = torch.from_numpy(np.maximum(np.abs(train.next_obs), 1.0).astype(np.float32))
    w = model.y_std / scale
    w = w / w.pow(2).mean().sqrt()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        if loss == "relative":
            return ((model.net(xs[idx]) - ys[idx]) * w[idx]).pow(2).mean()
        return F.smooth_l1_loss(model.net(xs[idx]), ys[idx], beta=0.1)

    return fit_cosine_adam(list(model.net.parameters()), batch_loss, len(xs), steps=steps, generator=generator,
                           batch_size=batch, lr=lr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="walker2d", choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--steps", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="mse", choices=("mse", "relative", "huber"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--sensitivity", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--ensemble", type=int, default=1, help="K models from seeds 0..K-1, scored by their mean")
    ap.add_argument("--out", default="benchmarks/results/bench_next_state.jsonl")
    a = ap.parse_args(argv)
    if a.ensemble < 1:
        ap.error(f"--ensemble must be at least 1, got {a.ensemble}")
    torch.set_num_threads(1)
    off = load_dataset(str(SHARED / f"{a.env}-medium-50k.hdf5"))
    on = load_dataset(str(SHARED / f"{a.env}-expert-50k.hdf5"))
    env_id = off.env_id
    assert env_id is not None
    data = TransitionBatch.concat([off.to_transition_batch(), on.to_transition_batch()])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(data))
    test, train = data[np.sort(perm[:2000])], data[np.sort(perm[2000:])]
    rows: list[dict] = []
    if a.sensitivity:
        sd = (test.next_obs - test.obs).std(0)
        for f in (0.01, 0.03, 0.1):
            noisy = test.next_obs + (f * sd * rng.standard_normal(test.next_obs.shape)).astype(np.float32)
            ph = physics_error(TransitionBatch(test.obs, test.act, test.rew, noisy, test.done), env_id,
                               max_transitions=a.physics_n)
            rows.append({"env": a.env, "kind": "sensitivity", "noise_fraction_of_delta_std": f,
                         "physics_median": ph["next_state_median"]})
    for steps in a.steps:
        preds, finals = [], []
        cpu = 0.0  # the fits only
        for seed in range(a.ensemble):
            g = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            model = DynamicsModel(train.obs_dim, train.act_dim, width=a.width, depth=a.depth)
            t0 = time.process_time()
            finals.append(fit(model, train, steps=steps, batch=a.batch, lr=a.lr, loss=a.loss, generator=g))
            cpu += time.process_time() - t0
            preds.append(model.predict(test.obs, test.act))
        pred_next = np.mean(preds, axis=0).astype(np.float32)
        err = relative_error(pred_next, test.next_obs)
        ph = physics_error(TransitionBatch(test.obs, test.act, test.rew, pred_next, test.done), env_id,
                           max_transitions=a.physics_n)
        row = {
            "env": a.env, "kind": "regression", "tag": a.tag, "steps": steps, "width": a.width, "depth": a.depth,
            "batch": a.batch, "lr": a.lr, "loss": a.loss, "cpu_seconds": cpu, "final_loss": float(np.mean(finals)),
            "physics_median": ph["next_state_median"], "physics_p90": ph["next_state_p90"],
            "data_median": float(np.median(err.max(1))), "data_p90": float(np.quantile(err.max(1), 0.9)),
            "largest_error_dim_counts": np.bincount(err.argmax(1), minlength=train.obs_dim).tolist(),
        }
        if a.ensemble > 1:
            spread = (np.std(preds, axis=0) / np.maximum(np.abs(pred_next), 1.0)).max(1)
            row |= {"ensemble": a.ensemble,
                    "member_data_medians": [float(np.median(relative_error(p, test.next_obs).max(1))) for p in preds],
                    "disagreement_error_spearman": float(np.corrcoef(spread.argsort().argsort(),
                                                                     err.max(1).argsort().argsort())[0, 1]),
                    "real_terminal_rate": float(test.done.mean())}
            for q in KEEP_FRACTIONS:
                keep = spread <= np.quantile(spread, q)
                row[f"keep{q}_data_median"] = float(np.median(err.max(1)[keep]))
                row[f"keep{q}_terminal_rate"] = float(test.done[keep].mean())
        rows.append(row)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
            print(r)


if __name__ == "__main__":
    main()
