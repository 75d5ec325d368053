"""Refreshes in a background process (``CFDGConfig.refresh_lag > 0``).

A refresh is minutes of generator training that the learner otherwise waits for. With a lag, the
buffer writes itself (pools, counters, generator, config) to a safetensors file in a temporary
folder and starts ``python -m cfdg_aug._background``, which loads that file, runs the ordinary
synchronous :meth:`~cfdg_aug.buffer.AugmentedReplayBuffer.refresh` and writes the new generator and
the two synthetic pools back. The learner keeps sampling the previous pools meanwhile; the buffer
installs the new ones once ``refresh_lag`` more online transitions have been added, waiting for the
process then if it has not finished. The install point is fixed by the count, never by the clock,
so a run does not depend on how fast the fit was: same seed, same run. (A pre-fit is installed as
soon as it has finished, and waited for at the first refresh: it swaps only the generator, which
nothing uses before that refresh, so where it falls changes nothing computed.)

Why a separate interpreter: a thread would share the learner's global torch RNG (network
initialisation seeds it; see :func:`cfdg_aug._fit.cpu_seeded`) and its GIL; ``multiprocessing``
would pickle the buffer and, with the ``spawn`` start method, re-import the user's script. Here
nothing is pickled and the exchange goes through the same checksummed files as :meth:`save`.

The child runs with the caller's torch thread count (``torch.get_num_threads()`` when the refresh
starts): on a machine with a spare core per learner, the fit costs the learner no wall time up to
the lag. It costs the machine the same CPU time as a synchronous refresh, plus a few seconds to
start the interpreter and exchange the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cfdg_aug.buffer import AugmentedReplayBuffer, RefreshStats
    from cfdg_aug.generator import FitStats

RESULT_KEY = "cfdg_aug.refresh"
"""Metadata key of the result file: JSON of the refresh's stats, guidance and guidance choice (a
pre-fit: of its fit's stats)."""
KINDS = ("refresh", "prefit")
PARENT_PID_VAR = "CFDG_AUG_PARENT_PID"
"""Environment variable giving the child its parent's pid, read at start (:func:`_exit_with_parent`)."""


class BackgroundRefreshError(RuntimeError):
    """The background refresh process failed; the message ends with the last lines it printed."""


def _stop(proc: subprocess.Popen[bytes] | None, folder: str) -> None:
    # Runs when the job is dropped unfinished (buffer garbage-collected, interpreter exit).
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


class BackgroundRefresh:
    """One refresh running in a child process, or its result once collected.

    Args:
        buffer: the buffer to refresh; its state is written now (the data snapshot the fit sees).
        install_at: ``online_added_total`` at which the buffer installs the result.
        seed: seed of the child buffer's sampling RNG (the held-out split of ``guidance="auto"``).
        threads: torch threads of the child.
        kind: ``"refresh"`` (fit and sample: :meth:`~cfdg_aug.buffer.AugmentedReplayBuffer.refresh`)
            or ``"prefit"`` (fit only: :meth:`~cfdg_aug.buffer.AugmentedReplayBuffer.prefit`).
    """

    def __init__(self, buffer: AugmentedReplayBuffer, *, install_at: int, seed: int, threads: int,
                 kind: str = "refresh") -> None:
        from cfdg_aug.generator import atomic_save_safetensors

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.install_at = int(install_at)
        self.refresh_index = buffer.num_refreshes + (kind == "refresh")
        self._result: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None
        self._folder = tempfile.mkdtemp(prefix="cfdg_aug_refresh_")
        self._proc: subprocess.Popen[bytes] | None = None
        # Registered first: a failure below still removes the folder.
        self._finalizer = weakref.finalize(self, _stop, None, self._folder)
        tensors, metadata = buffer.state_tensors()
        folder = Path(self._folder)
        atomic_save_safetensors(tensors, metadata, folder / "in.safetensors", what="background refresh input")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env[PARENT_PID_VAR] = str(os.getpid())
        # The child imports the same cfdg_aug as this process, wherever it was imported from.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        with open(folder / "stderr.txt", "wb") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cfdg_aug._background", str(folder), str(int(seed)), str(int(threads)),
                 str(buffer.device), kind],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
            )
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._folder)

    @classmethod
    def completed(cls, install_at: int, refresh_index: int, kind: str, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str]) -> BackgroundRefresh:
        """A job whose result is already known (restored from a saved buffer)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        job = cls.__new__(cls)
        job.install_at, job.refresh_index, job.kind = int(install_at), int(refresh_index), kind
        job._result, job._proc, job._folder = (tensors, metadata), None, ""
        job._finalizer = weakref.finalize(job, _stop, None, "")
        return job

    @property
    def done(self) -> bool:
        """Whether the result can be read without waiting."""
        return self._result is not None or (self._proc is not None and self._proc.poll() is not None)

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The child's output (waits for it): tensors ``generator.*``, ``pool2.*``, ``pool3.*`` and
        metadata with :data:`RESULT_KEY`. Raises :class:`BackgroundRefreshError` if it failed."""
        if self._result is None:
            from cfdg_aug.generator import load_safetensors

            assert self._proc is not None
            rc = self._proc.wait()
            folder = Path(self._folder)
            out = folder / "out.safetensors"
            try:
                if rc != 0 or not out.is_file():
                    tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-5:]
                    what = "pre-fit" if self.kind == "prefit" else f"refresh {self.refresh_index}"
                    raise BackgroundRefreshError(
                        f"background {what} failed (exit status {rc}): "
                        + (" | ".join(tail) or "no output")
                    )
                self._result = load_safetensors(out, what="background refresh result")
            finally:
                self._finalizer()  # the files are read (or useless): remove them now
        return self._result

    def cancel(self) -> None:
        """Stop the child (if running) and forget the job."""
        self._finalizer()


def stats_to_json(stats: RefreshStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def fit_stats_from_json(d: dict[str, Any]) -> FitStats:
    from cfdg_aug.generator import FitStats

    return FitStats(**d)


def stats_from_json(d: dict[str, Any]) -> RefreshStats:
    from cfdg_aug.buffer import RefreshStats

    d = dict(d)
    fit = d.pop("fit")
    return RefreshStats(**d, fit=None if fit is None else fit_stats_from_json(fit))


def _exit_with_parent(parent: int, folder: str, poll_seconds: float = 1.0) -> None:
    """Stop the child, removing its folder, once the process that started it is gone. A parent that
    exits normally cancels its jobs; one killed outright (SIGKILL, out of memory) cannot, and its
    child would otherwise finish a fit of minutes that nobody installs, on a core a resumed run needs."""
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent:
            shutil.rmtree(folder, ignore_errors=True)
            os._exit(1)


def _main(folder: str, seed: int, threads: int, device: str, kind: str = "refresh") -> None:
    """The child: load the buffer, refresh (or pre-fit) it synchronously, write the generator and
    (refresh) the synthetic pools."""
    parent = int(os.environ.get(PARENT_PID_VAR, os.getppid()))
    threading.Thread(target=_exit_with_parent, args=(parent, folder), daemon=True).start()
    import numpy as np
    import torch

    from cfdg_aug.buffer import SOURCE_SYNTHETIC_OFFLINE, SOURCE_SYNTHETIC_ONLINE, AugmentedReplayBuffer
    from cfdg_aug.generator import atomic_save_safetensors

    torch.set_num_threads(threads)
    path = Path(folder)
    buf = AugmentedReplayBuffer.load(path / "in.safetensors", device=device)
    # Its own stream: the parent keeps sampling batches from the RNG it saved.
    buf._rng = np.random.Generator(np.random.PCG64(seed))
    if kind == "prefit":
        fit = buf.prefit(progress=False)
        assert fit is not None
        result: dict[str, Any] = {"fit": dataclasses.asdict(fit)}
        keep = {"generator."}
    else:
        stats = buf.refresh(progress=False)
        result = {"stats": stats_to_json(stats), "guidance_choice": buf.last_guidance_choice}
        keep = {f"pool{SOURCE_SYNTHETIC_OFFLINE}.", f"pool{SOURCE_SYNTHETIC_ONLINE}.", "generator."}
    tensors, metadata = buf.state_tensors()
    tensors = {k: v for k, v in tensors.items() if any(k.startswith(p) for p in keep)}
    metadata = {k: v for k, v in metadata.items() if k.startswith("generator.")}
    metadata[RESULT_KEY] = json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    atomic_save_safetensors(tensors, metadata, path / "out.safetensors", what="background refresh result")


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:6])
