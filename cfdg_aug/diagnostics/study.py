"""The `cfdg-aug fidelity` study: fit once, score each guidance weight on held-out real data, and
compare with an unconditional (SynthER-style) generator trained with the same budget.

    cfdg-aug fidelity --dataset embedded --w 0,0.5,1,2,4 --out fidelity_out

Data: the dataset's first ``1 - online_fraction`` of episodes play the offline data and the rest
the online data (or ``online=`` names a second dataset). A random ``heldout_fraction`` of each is
kept out of both fits and used only for scoring, so the figures are about transitions the
generators never saw.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfdg_aug._io import atomic_write_text, folder_write_problem
from cfdg_aug.config import CFDGConfig, ConfigError, check_folder
from cfdg_aug.diagnostics.fidelity import fidelity_report, guidance_sweep, split_heldout, sweep_table
from cfdg_aug.generator import CFDGGenerator
from cfdg_aug.spaces import SpaceEncoding
from cfdg_aug.transitions import TransitionBatch


@dataclass
class FidelityStudy:
    """Result of :func:`run_fidelity_study`; ``files`` maps a name to the path written."""

    cfdg: list[dict[str, Any]]
    unconditional: dict[str, Any] | None
    table: str
    files: dict[str, str] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    """Per generator ("cfdg", "unconditional"): steps, final loss, wall and CPU seconds of the fit."""


_NO_BUFFER = "the study has no replay buffer: remove it (it is a setting of cfdg-aug run)"
_ONE_FIT = "the study fits each generator once: remove it (it is a setting of cfdg-aug run)"
STUDY_UNUSED_FIELDS: dict[str, str] = {
    "augmentation": "the study fits both a cfdg and an unconditional generator itself (--no-unconditional skips "
                    "the second); remove it",
    "guidance": "the study samples at each weight of --w; use --w",
    "guidance_candidates": "the study scores every weight of --w; use --w",
    "synthetic_online_size": "the study generates --n transitions per label (--terminal-n for the terminal "
                             "rate); use --n",
    "synthetic_offline_size": "the study generates --n transitions per label (--terminal-n for the terminal "
                              "rate); use --n",
    **{f: f"it sets the mix of a run's replay batches; {_NO_BUFFER}" for f in (
        "ratio_offline", "ratio_online", "ratio_synthetic", "synthetic_online_fraction", "real_mix")},
    **{f: f"it schedules a run's generator refreshes; {_ONE_FIT}" for f in (
        "refresh_every", "min_online", "refresh_lag")},
    **{f: f"it applies from a generator's second fit on; {_ONE_FIT}" for f in (
        "warm_start", "warm_start_steps", "warm_start_lr", "divergence_ratio")},
}
"""CFDGConfig fields the fidelity study never reads (they drive a run's buffer and refreshes, or the
study sets them itself), each with what to do instead: ``cfdg-aug fidelity --set`` refuses them."""


def check_study_overrides(overrides: dict[str, Any], name: str = "--set") -> None:
    """Refuse a CFDGConfig override (``FIELD=VALUE``) that the study would accept and never read
    (:data:`STUDY_UNUSED_FIELDS`), naming the field and what to use instead."""
    for key in overrides:
        if key in STUDY_UNUSED_FIELDS:
            raise ConfigError(f"{name} {key}: {STUDY_UNUSED_FIELDS[key]}")


def check_out_folder(out: str | os.PathLike[str], name: str = "out") -> None:
    """Refuse an output folder ``out`` (the setting ``name``) that is a file, sits under one, or
    whose nearest existing folder does not accept a new file, before anything is loaded or fitted:
    the files are written only after the fits."""
    check_folder(out, name)
    problem = folder_write_problem(out)
    if problem is not None:
        raise ConfigError(f"{name} {os.fspath(out)}: {problem}")


def split_offline_online(data: Any, online_fraction: float) -> tuple[TransitionBatch, TransitionBatch]:
    """First episodes -> offline, last ``online_fraction`` of the episodes -> online."""
    if not 0.0 < online_fraction < 1.0:
        raise ValueError(f"online_fraction must be in (0, 1), got {online_fraction!r}")
    episodes = data.episodes()
    if len(episodes) < 2:
        raise ValueError(f"dataset {data.name!r} has {len(episodes)} episode(s); need >= 2 to split by episode")
    k = min(len(episodes) - 1, max(1, int(round(len(episodes) * (1 - online_fraction)))))
    cut = episodes[k].start
    batch = data.to_transition_batch()
    return batch[:cut], batch[cut:]


def run_fidelity_study(
    offline: TransitionBatch, online: TransitionBatch, weights: Sequence[float], config: CFDGConfig, *,
    env_id: str | None = None, n: int = 2000, heldout_fraction: float = 0.1, compare_unconditional: bool = True,
    physics_n: int = 300, seed: int = 0, out: str | os.PathLike[str] | None = None, device: str = "cpu",
    progress: bool = True, terminal_n: int = 20_000, termination: str | None = None,
    act_encoding: SpaceEncoding | None = None, evals: int = 1,
) -> FidelityStudy:
    """Fit a CFDG generator (and an unconditional one) on the training parts and score them.

    ``termination``: env id whose termination rule decides generated terminals (None: a
    classifier); ``act_encoding``: the action space (bounds) the samples are projected onto, as
    an integration would pass it. ``terminal_n``: samples per label for the terminal rate.
    ``evals``: evaluations per report, averaged (:func:`~cfdg_aug.diagnostics.fidelity.mean_report`).
    ``out``: checked before the fits (:func:`check_out_folder`), written after them.
    """
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"evals must be an int >= 1, got {evals!r}")
    if out is not None:
        check_out_folder(out, "out")
    rng = np.random.default_rng(seed)
    off_fit, off_h = split_heldout(offline, heldout_fraction, rng, max_heldout=n)
    on_fit, on_h = split_heldout(online, heldout_fraction, rng, max_heldout=n)
    fits: dict[str, Any] = {}

    def fitted(mode: str) -> CFDGGenerator:
        g = CFDGGenerator(offline.obs_dim, offline.act_dim, config.replace(augmentation=mode), device=device,
                          seed=seed, termination=termination, act_encoding=act_encoding)
        wall, cpu = time.perf_counter(), time.process_time()
        st = g.fit(off_fit, on_fit, progress=progress)
        # The resolved config and precisions ("auto" decided by this machine's bf16 units) travel
        # with the figures, so a table can be traced to the settings that made it.
        fits[mode] = {"steps": st.steps, "final_loss": st.final_loss, "wall_seconds": time.perf_counter() - wall,
                      "cpu_seconds": time.process_time() - cpu, "threads": torch.get_num_threads(),
                      "stage_seconds": st.stage_seconds,
                      "training_precision": g.training_precision, "sampling_precision": g.sampling_dtype,
                      "config": g.config.to_dict()}
        return g

    gen = fitted("cfdg")
    reports = guidance_sweep(gen, off_h, on_h, weights, env_id=env_id, n=n, seed=seed, physics_n=physics_n,
                             progress=progress, terminal_n=terminal_n, evals=evals)
    uncond = None
    if compare_unconditional:
        ugen = fitted("unconditional")
        uncond = fidelity_report(ugen, off_h, on_h, env_id=env_id, n=n, seed=seed, physics_n=physics_n,
                                 per_dimension=False, terminal_n=terminal_n, evals=evals)
    table = sweep_table(reports)
    if uncond is not None:
        rows = sweep_table([uncond]).splitlines()[2:]
        table += "\n" + "\n".join(r.replace("| — |", "| unconditional |", 1) if r.startswith("| — |") else r
                                  for r in rows)
    table += "\n\n" + "; ".join(
        f"{mode} fit: {f['steps']} steps, {f['wall_seconds']:.0f} s wall ("
        + ", ".join(f"{k} {v:.0f}" for k, v in f["stage_seconds"].items())
        + f"), {f['cpu_seconds']:.0f} CPU-s ({f['threads']} threads)" for mode, f in fits.items())
    study = FidelityStudy(reports, uncond, table, fit=fits)
    if out is not None:
        study.files = _write(study, Path(out), gen, off_h, on_h, env_id, n, seed)
    return study


def _write(study: FidelityStudy, out: Path, gen: CFDGGenerator, off_h: TransitionBatch, on_h: TransitionBatch,
           env_id: str | None, n: int, seed: int) -> dict[str, str]:
    from cfdg_aug.diagnostics.plots import plot_sweep

    out.mkdir(parents=True, exist_ok=True)
    files = {"table": str(out / "fidelity.md"), "json": str(out / "fidelity.json")}
    atomic_write_text(out / "fidelity.md", study.table + "\n")
    atomic_write_text(out / "fidelity.json",
                      json.dumps({"cfdg": study.cfdg, "unconditional": study.unconditional, "fit": study.fit}, indent=2,
                                 default=_jsonable))
    files["sweep_plot"] = str(plot_sweep(study.cfdg, out / "sweep.png"))
    best = min(study.cfdg, key=lambda r: abs(r["online"]["auc"] - 0.5))
    plots = fidelity_report(gen, off_h, on_h, env_id=None, n=n, guidance=best["guidance"], seed=seed,
                            per_dimension=False, plot_dir=out, plot_max_dims=12)["plots"]
    files.update(plots or {})
    return files


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
