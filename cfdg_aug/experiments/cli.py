"""The ``cfdg-aug`` command line (typer).

    cfdg-aug run --algo iql --augmentation cfdg --dataset embedded --profile small --seed 0
    cfdg-aug sweep docs/results/study1_grid.yaml --workers 2
    cfdg-aug report results/study1 --out docs/results/study1
    cfdg-aug make-dataset --env Hopper-v4 --n-transitions 1000 --out random.hdf5
    cfdg-aug fidelity --dataset embedded --w 0,0.5,1,2,4 --out fidelity_out

See docs/experiments.md for the run directory layout, resume semantics and the grid file format.

Bad input (a setting, a dataset, a folder) ends in one ``error: ...`` line and exit status 2
(:func:`_input_errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from cfdg_aug._optional import require
from cfdg_aug.config import ConfigError, check_device

if TYPE_CHECKING:
    import typer
else:  # the CLI comes with the experiments extra: a core-only install gets one sentence naming it
    typer = require("typer", "experiments", what="the cfdg-aug command")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="CFDG offline-to-online experiments: run, sweep, report, make-dataset, fidelity.")


class Algo(str, Enum):
    iql = "iql"
    pex = "pex"
    apl = "apl"
    sac = "sac"


class Augmentation(str, Enum):
    none = "none"
    unconditional = "unconditional"
    cfdg = "cfdg"
    offline_only = "offline_only"  # a control arm (runner.CONTROL_ARMS)


class Profile(str, Enum):
    small = "small"
    paper = "paper"


DEVICE_HELP = "torch device: cpu, cuda (the current GPU) or cuda:N"
DEFAULT_ONLINE_FRACTION = 0.2
"""``fidelity --online-fraction`` when neither it nor ``--online`` is given."""


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _os_error(e: OSError, out: Path) -> str:
    """An OS error as one sentence naming the file it is about (``--out`` when it names none)."""
    return f"cannot access {e.filename}: {e.strerror}" if e.filename else f"cannot write --out {out}: {e}"


def _input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input: settings, dataset files, run folders and the files in
    them (a corrupted checkpoint), paths that cannot be read or written. Their messages name the
    setting or file. Imported lazily: ``--help`` stays fast."""
    from cfdg_aug.buffer import BufferFileError
    from cfdg_aug.datasets import DatasetError
    from cfdg_aug.experiments.runner import RunError
    from cfdg_aug.generator import CheckpointError

    return (ConfigError, RunError, DatasetError, BufferFileError, CheckpointError, FileNotFoundError,
            PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


@app.command()
def run(
    algo: Algo = typer.Option(Algo.iql, help="RL algorithm"),
    augmentation: Augmentation = typer.Option(Augmentation.cfdg, help="replay augmentation, or the control "
                                             "arm offline_only: none, learning from offline rows only"),
    dataset: str = typer.Option("embedded", help="'embedded', a D4RL-layout .hdf5 path or name, or minari:ID"),
    profile: Profile = typer.Option(Profile.small, help="budgets: small (2 CPU cores) or paper (GPU)"),
    seed: int = typer.Option(0, min=0, help="seed of everything in the run"),
    set_: list[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable): a run setting such as "
                                   "online_steps=5000, cfdg.FIELD=VALUE or algo.FIELD=VALUE; a list as "
                                   "cfdg.guidance_candidates=[0,1,2]", show_default=False),
    out: Path = typer.Option(Path("results"), help="parent folder of the run directory"),
    name: str = typer.Option(None, help="run directory name (default: the run id derived from the config)"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's choice)"),
    progress: bool = typer.Option(True, help="progress bars"),
    share_pretrained: bool = typer.Option(True, help="reuse (or publish) the pre-trained agent of this "
                                          "(dataset, offline algorithm config, seed) in --pretrained-dir, and "
                                          "likewise the generator's pre-fit (prefit_generator=true)"),
    pretrained_dir: Path = typer.Option(None, help="folder of shared pre-trained agents (default: OUT/pretrained)"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (gym, gymnasium "
                                 "warnings, d3rlpy's log lines), which otherwise go only to RUN_DIR/run.log"),
) -> None:
    """Offline pre-training then online fine-tuning, evaluated in normalised score; resumable.

    Re-running the same command continues a killed run from its last checkpoint and does nothing
    on a finished one. Pre-training is shared: runs that differ only after pre-training (the
    augmentation arms, the online settings, PEX after IQL) start from the same pre-trained agent.
    Settings are checked before anything is created or trained.
    """
    from cfdg_aug.experiments.runner import parse_set, resolve_config, run_experiment

    errors = _input_errors()
    try:
        check_device(device, "--device")
        cfg = resolve_config(algo.value, augmentation.value, dataset, profile.value, seed, parse_set(set_))
        outcome = run_experiment(cfg, out, device=device, run_name=name, progress=progress, threads=threads,
                                 share_pretrained=share_pretrained, pretrained_dir=pretrained_dir, verbose=verbose)
    except errors as e:
        _fail(str(e))
        return
    typer.echo(f"{outcome.status}: {outcome.run_dir}")


@app.command()
def sweep(
    grid: Path = typer.Argument(..., exists=True, dir_okay=False, help="grid YAML (see docs/experiments.md)"),
    workers: int = typer.Option(2, min=1, help="parallel worker processes (local) or concurrent Ray tasks"),
    ray_address: str = typer.Option(None, help="run on Ray: 'local' starts a local instance, 'auto' or "
                                    "HOST:PORT joins a cluster"),
    out: Path = typer.Option(None, help="override the grid's 'out' folder"),
    device: str = typer.Option(None, help="override the grid's device (" + DEVICE_HELP + ")"),
    pretrained_dir: Path = typer.Option(None, help="override the grid's 'pretrained_dir', the folder of the "
                                        "shared pre-trained agents (default: OUT/pretrained)"),
) -> None:
    """Run every (algo x augmentation x dataset x seed) of a grid, skipping finished runs."""
    from cfdg_aug.experiments.sweep import load_grid, run_sweep

    errors = _input_errors()
    try:
        spec = load_grid(grid)
        if out is not None:
            spec.out = str(out)
        if pretrained_dir is not None:
            spec.pretrained_dir = str(pretrained_dir)
        if device is not None:
            # The spelling here; whether a machine has the device is checked where the runs execute.
            spec.device = check_device(device, "--device", available=False)
        results = run_sweep(spec, workers=workers, ray_address=ray_address)
    except errors as e:
        _fail(str(e))
        return
    except ImportError as e:  # --ray-address without the ray extra (refused before anything is created)
        if e.name != "ray":
            raise
        _fail(str(e))
        return
    failed = [r for r in results if r["status"] == "failed"]
    for r in results:
        typer.echo(f"{r['status']:>17}  {r['run_id']}" + (f"  ({r['error']})" if r.get("error") else ""))
    typer.echo(f"{len(results) - len(failed)}/{len(results)} runs done in {spec.out}")
    if failed:
        raise typer.Exit(1)


@app.command()
def report(
    dirs: list[Path] = typer.Argument(..., help="folders holding run directories (searched recursively)"),
    out: Path = typer.Option(Path("report"), help="output folder for report.md, CSVs and plots"),
    reps: int = typer.Option(2000, min=100, help="bootstrap resamples"),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="bootstrap seed"),
    last: int = typer.Option(1, min=1, help="a run's score: the mean of its last LAST online evaluations"),
) -> None:
    """Aggregate finished runs with rliable: IQM / mean with 95% CIs, curves, probability of improvement.

    Scores are aggregated with 95% stratified bootstrap CIs, learning curves drawn with CI bands, the
    probability of improvement of CFDG over each baseline per algorithm (computed on each task both arms
    have, then averaged over those tasks), CFDG paired with each baseline by (task, seed) with a bootstrap
    CI, a sign test and a sign-flip permutation test, and the generator's per-refresh fidelity beside the
    return; the notes flag single-seed methods, missing tasks and runs pooled or compared across other
    settings.
    """
    from cfdg_aug.experiments.report import ReportError, make_report

    try:
        res = make_report(dirs, out, reps=reps, seed=seed, last=last)
    except ReportError as e:
        _fail(str(e))
        return
    except OSError as e:  # a run folder cannot be read, or the output folder cannot be written
        _fail(_os_error(e, out))
        return
    typer.echo(res.markdown)
    typer.echo(f"wrote {', '.join(str(p) for p in res.files)}")


@app.command("make-dataset", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def make_dataset(ctx: typer.Context) -> None:
    """Roll out an SB3 policy or random actions into a D4RL-layout / Minari dataset.

    All arguments are those of python -m cfdg_aug.datasets.make: try cfdg-aug make-dataset --help.
    """
    from cfdg_aug.datasets.make import main as make_main

    code = make_main(list(ctx.args))
    raise typer.Exit(code)


@app.command()
def fidelity(
    dataset: str = typer.Option("embedded", help="'embedded', a D4RL-layout .hdf5 path or name, or minari:ID"),
    online: str = typer.Option(None, help="a second dataset used as the online data (default: the last "
                               "--online-fraction of the dataset's episodes)"),
    online_fraction: float = typer.Option(None, min=0.01, max=0.99, show_default=False,
                                          help="share of the dataset's episodes used as online data (default "
                                          f"{DEFAULT_ONLINE_FRACTION}; not with --online)"),
    w: str = typer.Option("0,0.5,1,2,4", help="comma-separated guidance weights"),
    profile: Profile = typer.Option(Profile.small, help="CFDGConfig profile of both generators"),
    set_: list[str] = typer.Option([], "--set", help="CFDGConfig override FIELD=VALUE (repeatable); the fields "
                                   "of a run's buffer and refreshes (guidance, pool sizes, batch mix, refresh "
                                   "schedule) are refused: see --w and --n", show_default=False),
    n: int = typer.Option(2000, min=10, help="generated and held-out transitions per label"),
    heldout_fraction: float = typer.Option(0.1, min=0.01, max=0.5, help="real data kept out of the fits"),
    unconditional: bool = typer.Option(True, help="also fit an unconditional generator with the same budget"),
    physics: bool = typer.Option(True, help="re-simulate generated transitions in MuJoCo (when installed)"),
    terminal_n: int = typer.Option(20_000, min=0, help="generated transitions per label for the terminal rate"),
    env_rules: bool = typer.Option(True, help="use the env's termination rule and action bounds where known, as "
                                   "the integrations do (else: a termination classifier and the data's range)"),
    seed: int = typer.Option(0, min=0),
    evals: int = typer.Option(5, min=1, help="evaluations per report (a fresh sample and classifier each, seeds "
                              "SEED, SEED+1, ...), averaged: one evaluation's AUC sat up to 0.06 from the mean of five"),
    out: Path = typer.Option(Path("fidelity_out"), help="folder for the table, JSON and plots"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's choice)"),
) -> None:
    """Fit once, then fidelity per guidance weight (table + plot), and unconditional vs CFDG."""
    from cfdg_aug.config import CFDGConfig
    from cfdg_aug.datasets import load_dataset
    from cfdg_aug.datasets.envs import action_encoding, deferred_library_warnings
    from cfdg_aug.diagnostics.study import (
        check_out_folder,
        check_study_overrides,
        run_fidelity_study,
        split_offline_online,
    )
    from cfdg_aug.experiments.runner import parse_set

    try:
        check_device(device, "--device")
        try:
            weights = [float(x) for x in w.split(",") if x.strip()]
        except ValueError:
            weights = []
        if not weights or any(not (x >= 0 and x < float("inf")) for x in weights):
            raise ValueError(f"--w: guidance weights must be finite numbers >= 0, comma-separated, got {w!r}")
        # FIELD=VALUE, or cfdg.FIELD=VALUE as for run (parse_set files those under "cfdg").
        overrides = parse_set([f"cfdg.{x}" if not x.startswith("cfdg.") else x for x in set_])
        overrides = dict(overrides.pop("cfdg", {}))
        check_study_overrides(overrides, "--set")  # fields the study would never read
        config = (CFDGConfig.small if profile is Profile.small else CFDGConfig.paper)(**overrides)
        if online is not None and online_fraction is not None:
            raise ConfigError(f"--online-fraction {online_fraction:g} splits --dataset into offline and online "
                              f"episodes, and --online {online} is the online data: give one or the other")
        # Before the data is loaded and the fits run: the files are written only at the end.
        check_out_folder(out, "--out")
        data = load_dataset(dataset)
        if online is None:
            off, on = split_offline_online(data, DEFAULT_ONLINE_FRACTION if online_fraction is None
                                           else online_fraction)
        else:
            online_data = load_dataset(online)
            env_off, env_on = data.env_id, online_data.env_id
            if env_off is not None and env_on is not None and _family(env_off) != _family(env_on):
                raise ConfigError(f"--online {online} was recorded in {online_data.env_id}, --dataset {dataset} in "
                                  f"{data.env_id}: both must come from the same environment")
            if (online_data.obs_dim, online_data.act_dim) != (data.obs_dim, data.act_dim):
                raise ConfigError(f"--online {online} has {online_data.obs_dim}-dim observations and "
                                  f"{online_data.act_dim}-dim actions, --dataset {dataset} has {data.obs_dim} and "
                                  f"{data.act_dim}: both must come from the same environment")
            off, on = data.to_transition_batch(), online_data.to_transition_batch()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        env_id = data.env_id
        with deferred_library_warnings():  # MuJoCo's and gymnasium's notices: deprecations hidden, others after
            act_encoding = None
            if env_rules and env_id is not None:
                act_encoding = action_encoding(env_id)
            study = run_fidelity_study(off, on, weights, config, env_id=env_id if physics else None, n=n,
                                       heldout_fraction=heldout_fraction, compare_unconditional=unconditional,
                                       seed=seed, out=out, device=device, terminal_n=terminal_n,
                                       termination=env_id if env_rules else None, act_encoding=act_encoding,
                                       evals=evals)
    except (ConfigError, ValueError, OSError) as e:
        _fail(_os_error(e, out) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else str(e))
        return
    typer.echo(study.table)
    for k, v in study.files.items():
        typer.echo(f"{k}: {v}")


def _family(env_id: str) -> str:
    """The task of an env id, across versions (Hopper-v4 and Hopper-v5 are one task)."""
    from cfdg_aug.datasets.scores import env_family

    try:
        return env_family(env_id)
    except ValueError:
        return env_id


def _one_line_paragraphs(doc: str) -> str:
    """A docstring as typer help: each paragraph on one line. Typer keeps a docstring's single line
    breaks, so a paragraph wrapped at the source's width shows as lines broken mid-sentence."""
    return "\n\n".join(" ".join(par.split()) for par in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _one_line_paragraphs(_command.callback.__doc__)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``cfdg-aug``). A usage error (an unknown option, a value outside
    an option's choices or range) is one ``error: ...`` line and exit status 2, like every other
    bad input, instead of click's boxed usage block."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions  # type: ignore[no-redef]

    try:
        code = app(args=argv if argv is not None else sys.argv[1:], prog_name="cfdg-aug", standalone_mode=False)
    except getattr(click_exceptions, "NoArgsIsHelpError", ()) as e:  # `cfdg-aug` alone: the help (click >= 8.2)
        e.show()
        sys.exit(e.exit_code)
    except click_exceptions.UsageError as e:
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        typer.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
