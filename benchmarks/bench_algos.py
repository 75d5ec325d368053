"""Update throughput of PEX and APL relative to d3rlpy's IQL and SAC, same batch size, same run.

    python -m benchmarks.bench_algos [--batch-size 256] [--steps 20] [--repeats 3] [--device cpu:0] [--tag TAG]

Each algorithm is built for Hopper shapes (obs 11, act 3) with its *default* (paper) architecture
and trained with ``algo.update(batch)`` on a fixed in-memory batch, so the number is the cost of the
gradient update alone (no environment, no buffer), except the row ``apl_cfdg_routed``, which also
includes APL drawing its branch batches from a bound ``AugmentedReplayBuffer`` (pools filled with
random data; no generator training). Timings are interleaved across algorithms (median of repeats)
because the machine is shared and noisy; the ratios are what count:

- ``pex / iql``: PEX adds one composition (two policy passes and two Q evaluations) per update in
  its released ``composed`` variant; ``pex_dataset`` is the plain IQL policy loss.
- ``apl / sac``: APL has 5 critics of 3x256 (SAC 2 of 2x256) and, in conservative updates, the CQL
  logsumexp over 30 sampled actions per state; greedy updates skip it. ``apl_conservative`` and
  ``apl_greedy`` time each branch alone; ``apl`` mixes them with p = 0.5 as in training.
  d3rlpy's CQL (2 critics of 2x256, 10 actions per sampler) is the reference for the conservative
  branch: ``apl_conservative / cql``.
- On CUDA, ``iql_graph`` and ``sac_graph`` are the same updates built with d3rlpy's
  ``compile_graph=True`` (``torch.compile`` plus a captured CUDA graph replayed each update): the
  lever for the launch-bound updates a GPU gives at batch 256 (issue 16's paper-profile cost).
  ``iql_graph / iql`` and ``sac_graph / sac`` are their speed-ups.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import d3rlpy
import numpy as np
import torch
from tqdm import tqdm

from benchmarks._common import device_suffix, write_result
from cfdg_aug.buffer import AugmentedReplayBuffer
from cfdg_aug.config import CFDGConfig
from cfdg_aug.integrations.d3rlpy._convert import transition_batch_to_minibatch
from cfdg_aug.integrations.d3rlpy.apl import APL, BRANCH_CONSERVATIVE, BRANCH_GREEDY, APLConfig
from cfdg_aug.integrations.d3rlpy.pex import PEX, PEXConfig
from cfdg_aug.transitions import TransitionBatch

OBS, ACT = 11, 3  # hopper


def random_batch(n: int, rng: np.random.Generator) -> TransitionBatch:
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    return TransitionBatch.from_arrays(obs, rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
                                       rng.normal(size=n).astype(np.float32),
                                       obs + 0.01 * rng.normal(size=(n, OBS)).astype(np.float32),
                                       (rng.random(n) < 0.01).astype(np.float32))


def build(device: str, batch_size: int, rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """name -> a function doing one update."""
    mb = transition_batch_to_minibatch(random_batch(batch_size, rng))
    iql = d3rlpy.algos.IQLConfig(batch_size=batch_size).create(device=device)
    iql.create_impl((OBS,), ACT)
    sac = d3rlpy.algos.SACConfig(batch_size=batch_size).create(device=device)
    sac.create_impl((OBS,), ACT)
    cql = d3rlpy.algos.CQLConfig(batch_size=batch_size).create(device=device)
    cql.create_impl((OBS,), ACT)
    pex = PEX.from_iql(iql)
    pex_ds = PEX.from_iql(iql, PEXConfig.from_iql_config(iql.config, policy_target="dataset"))

    def apl_algo() -> APL:
        # paper defaults except greedy_min_online (10K), lowered to the 2K transitions put in
        # the FIFO below so that the greedy branch is possible
        algo = APLConfig(batch_size=batch_size, greedy_min_online=2000).create(device=device)
        algo.create_impl((OBS,), ACT)
        return algo

    apl, apl_routed = apl_algo(), apl_algo()
    fifo = random_batch(2000, rng)
    for a in (apl, apl_routed):
        for i in range(len(fifo)):
            a.observe_online(fifo.obs[i], fifo.act[i], float(fifo.rew[i]), fifo.next_obs[i], float(fifo.done[i]))
    pools = AugmentedReplayBuffer(OBS, ACT, config=CFDGConfig(augmentation="none"), seed=0)
    pools.add_offline(random_batch(20_000, rng))
    pools.add(random_batch(5_000, rng))
    apl_routed.bind_buffer(pools)
    graphs: dict[str, Callable[[], Any]] = {}
    if torch.device(device).type == "cuda":  # d3rlpy ignores compile_graph elsewhere
        iql_g = d3rlpy.algos.IQLConfig(batch_size=batch_size, compile_graph=True).create(device=device)
        iql_g.create_impl((OBS,), ACT)
        sac_g = d3rlpy.algos.SACConfig(batch_size=batch_size, compile_graph=True).create(device=device)
        sac_g.create_impl((OBS,), ACT)
        graphs = {"iql_graph": lambda: iql_g.update(mb), "sac_graph": lambda: sac_g.update(mb)}
    return {
        "iql": lambda: iql.update(mb),
        "pex": lambda: pex.update(mb),
        "pex_dataset": lambda: pex_ds.update(mb),
        "sac": lambda: sac.update(mb),
        "cql": lambda: cql.update(mb),
        "apl": lambda: apl.update(mb),
        "apl_conservative": lambda: apl.update_branch(mb, BRANCH_CONSERVATIVE),
        "apl_greedy": lambda: apl.update_branch(mb, BRANCH_GREEDY),
        "apl_cfdg_routed": lambda: apl_routed.update(mb),
        **graphs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="updates per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu:0")
    ap.add_argument("--tag", default="", help="written to results/bench_algos_TAG.json (keeps earlier files)")
    args = ap.parse_args()
    torch.manual_seed(0)
    d3rlpy.seed(0)
    fns = build(args.device, args.batch_size, np.random.default_rng(0))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (d3rlpy captures its CUDA graphs after 3 updates)
        for _ in range(5):
            fn()
    for _ in tqdm(range(args.repeats), desc="repeats"):
        for name, fn in fns.items():  # interleaved
            if "cuda" in args.device:
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if "cuda" in args.device:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    sps = {k: args.steps / float(np.median(v)) for k, v in times.items()}
    ratios = {
        "pex_over_iql": sps["pex"] / sps["iql"],
        "pex_dataset_over_iql": sps["pex_dataset"] / sps["iql"],
        "apl_over_sac": sps["apl"] / sps["sac"],
        "apl_conservative_over_sac": sps["apl_conservative"] / sps["sac"],
        "apl_greedy_over_sac": sps["apl_greedy"] / sps["sac"],
        "apl_conservative_over_cql": sps["apl_conservative"] / sps["cql"],
        "apl_cfdg_routed_over_apl": sps["apl_cfdg_routed"] / sps["apl"],
    }
    if "iql_graph" in sps:
        ratios.update(iql_graph_over_iql=sps["iql_graph"] / sps["iql"], sac_graph_over_sac=sps["sac_graph"] / sps["sac"])
    for k, v in sps.items():
        print(f"{k:>18s}: {v:8.1f} updates/s")
    for k, v in ratios.items():
        print(f"{k:>28s}: {v:.3f}")
    path = write_result("bench_algos" + device_suffix(args.tag, args.device), {
        "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "device": args.device, "updates_per_second": sps, "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
