"""How precise must a generated next state be, and how precise can a learned one get?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_next_state --env walker2d

Two measurements on real data (../shared/datasets), physics error as ``cfdg-aug fidelity`` reports
it (median over transitions of the largest relative next-state error, MuJoCo re-simulation):

1. **Sensitivity**: real (s, a) with their real s' perturbed by ``f`` x the per-dimension std of
   s' - s (f = 1%, 3%, 10%): what error a generator's imprecision of that size shows.
2. **Regression**: the dynamics model of ``next_obs_target="model"``
   (:class:`cfdg_aug.dynamics.DynamicsModel`, 3 x 256 SiLU MLP, batch 256, lr 1e-3 cosine) fitted
   for ``--steps`` on medium + expert transitions and evaluated on 2,000 held-out REAL (s, a): the
   best a learned s' of that size and budget does, before any generated (s, a) enter.

Results append to ``benchmarks/results/bench_next_state.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cfdg_aug.datasets import load_dataset
from cfdg_aug.diagnostics.physics import physics_error
from cfdg_aug.dynamics import DynamicsModel
from cfdg_aug.transitions import TransitionBatch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="walker2d", choices=("hopper", "walker2d", "halfcheetah"))
    ap.add_argument("--steps", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--physics-n", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/bench_next_state.jsonl")
    a = ap.parse_args(argv)
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
    sd = (test.next_obs - test.obs).std(0)
    for f in (0.01, 0.03, 0.1):
        noisy = test.next_obs + (f * sd * rng.standard_normal(test.next_obs.shape)).astype(np.float32)
        ph = physics_error(TransitionBatch(test.obs, test.act, test.rew, noisy, test.done), env_id,
                           max_transitions=a.physics_n)
        rows.append({"env": a.env, "kind": "sensitivity", "noise_fraction_of_delta_std": f,
                     "physics_median": ph["next_state_median"]})
    for steps in a.steps:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = DynamicsModel(train.obs_dim, train.act_dim)
        cpu = time.process_time()
        loss = model.fit(train.obs, train.act, train.next_obs, steps=steps, generator=g)
        cpu = time.process_time() - cpu
        pred = TransitionBatch(test.obs, test.act, test.rew, model.predict(test.obs, test.act), test.done)
        ph = physics_error(pred, env_id, max_transitions=a.physics_n)
        rows.append({"env": a.env, "kind": "regression", "steps": steps, "cpu_seconds": cpu, "final_loss": loss,
                     "physics_median": ph["next_state_median"], "physics_p90": ph["next_state_p90"]})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
            print(r)


if __name__ == "__main__":
    main()
