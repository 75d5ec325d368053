"""Wall time of a small-profile IQL offline-to-online run with CFDG vs without, same run.

    python -m benchmarks.bench_d3rlpy_o2o [--online-steps 15000] [--threads 1] [--with-native]
                                          [--refresh-lag 2500] [--prefit] [--prefit-background]
                                          [--tag TAG] [--device cuda]

Both arms fine-tune the same IQL agent (built on the embedded hopper set, the runner's paper
hyperparameters; no offline training, it does not change the cost of an update) online on
Hopper-v4 with ``fit_online`` for ``--online-steps`` steps (one update per step, batch 256) and a
:class:`CFDGReplayBuffer` holding the offline data: ``augmentation="none"`` (real offline + real
online replay) and ``"cfdg"`` with ``CFDGConfig.small()`` unchanged (its generator, sampler,
refresh schedule and pool sizes are whatever the profile holds; the JSON records them).
Target (issue 18): cfdg / none <= 1.25. ``--refresh-lag N`` (N > 0) adds the arm
``cfdg_background``: the same profile with ``refresh_lag=N``, each refresh fitted in a background
process with the same thread count (``cfdg_aug._background``) and installed N online steps after it
started. It uses a second core: its CPU-seconds (this process and its children) are recorded next
to the wall time.
``--prefit`` adds the arm ``cfdg_prefit``: the generator pre-fitted on the offline data before
``fit_online`` (``AugmentedReplayBuffer.prefit``; timed apart as ``prefit_seconds``, the cost that a
run's pre-training hides when the pre-fit runs beside it), then refreshes with ``--refresh-lag``
(every one a warm refit).
``--prefit-background`` adds the arm ``cfdg_prefit_background``: the same pre-fit started in a
background process (``prefit(background=True)``) just before ``fit_online`` and inside its wall
time, with no pre-training to hide it. ``fit_online`` updates from its first step
(``update_start_step=0``, d3rlpy's default), and the buffer waits for the pre-fit only when the
first refresh starts, so the learner's online steps before it (``refresh_every``, 5,000 in the
small profile) run beside it. Its wall time against ``cfdg_prefit``'s wall time plus
``prefit_seconds`` is what that deferral saves over waiting for the pre-fit at the first online step.

The cfdg overhead (cfdg wall - none wall) is split into generator fitting, generator sampling
(both from the refresh stats), buffer sampling (``sample_transition_batch`` time, cfdg - none) and
the rest (mirroring appends, refresh bookkeeping, noise). ``--with-native`` adds a third arm with
d3rlpy's own ``create_fifo_replay_buffer`` filled with the offline episodes (the d3rlpy fine-tuning
idiom; Python-loop batch sampling) as a reference.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from benchmarks._common import device_suffix, write_result

NAME = "bench_d3rlpy_o2o"


def _seed(seed: int) -> None:
    import d3rlpy
    import numpy as np

    d3rlpy.seed(seed)
    np.random.seed(seed)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the background refreshes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_arm(kind: str, algo0: Any, dataset: Any, env_id: str, steps: int, seed: int,
            refresh_lag: int = 0, prefit: bool = False, prefit_background: bool = False,
            device: str = "cpu") -> dict[str, Any]:
    import d3rlpy
    from d3rlpy.dataset import FIFOBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import make_env
    from cfdg_aug.generator import FIT_STAGES
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer, transition_batch_to_episodes

    _seed(seed)
    algo = copy.deepcopy(algo0)
    env = make_env(env_id)
    d3rlpy.envs.seed_env(env, seed)
    tb = dataset.to_transition_batch()
    t_build = time.perf_counter()
    if kind == "native":
        buf: Any = d3rlpy.dataset.create_fifo_replay_buffer(len(tb) + steps, env=env)
        for ep in transition_batch_to_episodes(tb):
            buf.append_episode(ep)
    else:
        buf = CFDGReplayBuffer(FIFOBuffer(len(tb) + steps), env=env, offline_dataset=tb,
                               config=CFDGConfig.small(augmentation=kind, refresh_lag=refresh_lag),
                               online_capacity=steps, seed=seed, device=device)
    build_s = time.perf_counter() - t_build
    prefit_s = prefit_cpu = 0.0
    if prefit:  # the generator's first fit, on the offline data, before the online phase
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        buf.augmented.prefit()
        prefit_s, prefit_cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    if prefit_background:  # inside the timed phase: nothing before fit_online hides it
        buf.augmented.prefit(background=True)

    def progress(_algo: Any, _epoch: int, step: int) -> None:
        # one line per 1,000 steps: a run killed by a time limit (a GPU lease) still says how far it got
        if step % 1000 == 0:
            done = len(buf.refresh_log) if kind != "native" else 0
            print(f"[{NAME}] arm {kind}: step {step}, {time.perf_counter() - t0:.1f} s, {done} refreshes", flush=True)

    algo.fit_online(env, buffer=buf, n_steps=steps, n_steps_per_epoch=steps, show_progress=True,
                    logger_adapter=d3rlpy.logging.NoopAdapterFactory(), with_timestamp=False, callback=progress)
    wall = time.perf_counter() - t0
    if kind != "native" and buf.augmented is not None:
        buf.augmented.cancel_refresh()  # one started too late to be installed in this run
    cpu = _cpu_seconds() - cpu0
    env.close()
    out: dict[str, Any] = {"wall_seconds": wall, "cpu_seconds": cpu, "buffer_build_seconds": build_s,
                           "steps": steps, "refresh_lag": refresh_lag, "prefit": prefit,
                           "prefit_seconds": prefit_s, "prefit_cpu_seconds": prefit_cpu,
                           "prefit_background": prefit_background}
    if kind != "native":
        log = buf.refresh_log
        out.update(
            refreshes=len(log), refresh_online_steps=[e["online_step"] for e in log],
            generator_fit_seconds=float(sum(e["fit_seconds"] for e in log)),
            generator_sample_seconds=float(sum(e["sample_seconds"] for e in log)),
            # the fits split by the model trained (FitStats.stage_seconds), summed over refreshes
            generator_fit_stage_seconds={k: float(sum(e.get(f"fit_seconds_{k}") or 0.0 for e in log))
                                         for k in FIT_STAGES},
            buffer_sample_seconds=float(buf.sample_seconds),
            refresh_wait_seconds=float(sum(e["wait_seconds"] for e in log)),
            prefit_wait_seconds=float(buf.augmented.prefit_wait_seconds) if buf.augmented is not None else 0.0,
            source_counts=[int(c) for c in buf.source_histogram],
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--online-steps", type=int, default=15_000)
    p.add_argument("--threads", type=int, default=1)  # 2 threads collapse on a busy 2-core machine
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-native", action="store_true")
    p.add_argument("--refresh-lag", type=int, default=0, help="> 0: add the cfdg_background arm")
    p.add_argument("--prefit", action="store_true",
                   help="add the cfdg_prefit arm: the generator pre-fitted on the offline data before fit_online "
                        "(timed apart: pre-training hides it), then refreshes with --refresh-lag")
    p.add_argument("--prefit-background", action="store_true",
                   help="add the cfdg_prefit_background arm: the pre-fit in a background process started with "
                        "fit_online, waited for at the first refresh, then refreshes with --refresh-lag")
    p.add_argument("--tag", default="", help="written to results/bench_d3rlpy_o2o_TAG.json (keeps earlier files)")
    p.add_argument("--device", default="cpu", help="torch device of the agent and the generator (cpu, cuda)")
    args = p.parse_args(argv)

    import torch
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.dataset import InfiniteBuffer

    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.experiments.runner import ExperimentConfig, build_algo
    from cfdg_aug.integrations.d3rlpy import CFDGReplayBuffer

    _seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(dataset="embedded", offline_steps=0, seed=args.seed)
    dataset = load_dataset(cfg.dataset)
    env_id = dataset.env_id
    algo0 = build_algo(cfg, env_id, args.device)
    # Build networks and fit the reward scaler on the offline data, as pre-training would.
    scaler_buf = CFDGReplayBuffer(InfiniteBuffer(), offline_dataset=dataset.to_transition_batch(),
                                  config=CFDGConfig.small(augmentation="none"))
    build_scalers_with_transition_picker(algo0, scaler_buf)
    algo0.build_with_dataset(scaler_buf)
    arms = ["none", "cfdg"] + (["cfdg_background"] if args.refresh_lag else []) + (["cfdg_prefit"] if args.prefit else []) \
        + (["cfdg_prefit_background"] if args.prefit_background else []) + (["native"] if args.with_native else [])
    res = {}
    for arm in arms:
        print(f"[{NAME}] arm {arm}: {args.online_steps} online steps")
        kind, lag = (("cfdg", args.refresh_lag) if arm in ("cfdg_background", "cfdg_prefit", "cfdg_prefit_background")
                     else (arm, 0))
        res[arm] = run_arm(kind, algo0, dataset, env_id, args.online_steps, args.seed, refresh_lag=lag,
                           prefit=arm == "cfdg_prefit", prefit_background=arm == "cfdg_prefit_background",
                           device=args.device)
        print(f"[{NAME}] arm {arm}: {res[arm]['wall_seconds']:.1f} s")
    none, cfdg = res["none"], res["cfdg"]
    overhead = cfdg["wall_seconds"] - none["wall_seconds"]
    split = {
        "generator_fit_seconds": cfdg["generator_fit_seconds"],
        "generator_sample_seconds": cfdg["generator_sample_seconds"],
        "buffer_sample_seconds_extra": cfdg["buffer_sample_seconds"] - none["buffer_sample_seconds"],
    }
    split["other_seconds"] = overhead - sum(split.values())
    result: dict[str, Any] = {
        "description": "IQL O2O on Hopper-v4 (embedded hopper-medium set), small profile, wall time of fit_online",
        "arms": res,
        "ratio_cfdg_over_none": cfdg["wall_seconds"] / none["wall_seconds"],
        "target_ratio": 1.25,
        "cfdg_config": CFDGConfig.small(augmentation="cfdg").to_dict(),
        "overhead_seconds": overhead,
        "overhead_split": split,
        "threads": args.threads,
        "device": args.device,
    }
    if "cfdg_background" in res:
        bg = res["cfdg_background"]
        result["ratio_cfdg_background_over_none"] = bg["wall_seconds"] / none["wall_seconds"]
        result["cpu_ratio_cfdg_background_over_cfdg"] = bg["cpu_seconds"] / cfdg["cpu_seconds"]
    if "cfdg_prefit" in res:
        pf = res["cfdg_prefit"]
        result["ratio_cfdg_prefit_over_none"] = pf["wall_seconds"] / none["wall_seconds"]
    if "cfdg_prefit_background" in res:
        pb = res["cfdg_prefit_background"]
        result["ratio_cfdg_prefit_background_over_none"] = pb["wall_seconds"] / none["wall_seconds"]
    if "native" in res:
        result["ratio_none_over_native"] = none["wall_seconds"] / res["native"]["wall_seconds"]
        result["ratio_cfdg_over_native"] = cfdg["wall_seconds"] / res["native"]["wall_seconds"]
    path = write_result(NAME + device_suffix(args.tag, args.device), result)
    print(f"[{NAME}] none {none['wall_seconds']:.1f} s, cfdg {cfdg['wall_seconds']:.1f} s "
          f"({cfdg['refreshes']} refreshes): ratio {result['ratio_cfdg_over_none']:.2f} (target <= 1.25)")
    print(f"[{NAME}] overhead {overhead:.1f} s = fit {split['generator_fit_seconds']:.1f} + sample "
          f"{split['generator_sample_seconds']:.1f} + buffer sampling {split['buffer_sample_seconds_extra']:.1f} "
          f"+ other {split['other_seconds']:.1f}")
    print(f"[{NAME}] the fits by model: " + ", ".join(f"{k} {v:.1f} s" for k, v in cfdg["generator_fit_stage_seconds"].items()))
    if "cfdg_background" in res:
        bg = res["cfdg_background"]
        print(f"[{NAME}] cfdg with refresh_lag={args.refresh_lag}: {bg['wall_seconds']:.1f} s, ratio "
              f"{result['ratio_cfdg_background_over_none']:.2f}; waited {bg['refresh_wait_seconds']:.1f} s for "
              f"fits of {bg['generator_fit_seconds']:.1f} s; CPU-seconds {bg['cpu_seconds']:.0f} against "
              f"{cfdg['cpu_seconds']:.0f} synchronous")
    if "cfdg_prefit" in res:
        pf = res["cfdg_prefit"]
        print(f"[{NAME}] cfdg pre-fitted (refresh_lag={args.refresh_lag}): {pf['wall_seconds']:.1f} s, ratio "
              f"{result['ratio_cfdg_prefit_over_none']:.2f}; waited {pf['refresh_wait_seconds']:.1f} s for refits of "
              f"{pf['generator_fit_seconds']:.1f} s; the pre-fit before it {pf['prefit_seconds']:.1f} s")
    if "cfdg_prefit_background" in res:
        pb = res["cfdg_prefit_background"]
        print(f"[{NAME}] cfdg pre-fitted in the background from the first online step: {pb['wall_seconds']:.1f} s, "
              f"ratio {result['ratio_cfdg_prefit_background_over_none']:.2f}; waited {pb['prefit_wait_seconds']:.1f} s "
              f"for the pre-fit at the first refresh and {pb['refresh_wait_seconds']:.1f} s for refits")
    if "native" in res:
        print(f"[{NAME}] d3rlpy native buffer {res['native']['wall_seconds']:.1f} s; none/native "
              f"{result['ratio_none_over_native']:.2f}")
    print(f"[{NAME}] wrote {path}")
    return result


if __name__ == "__main__":
    main()
