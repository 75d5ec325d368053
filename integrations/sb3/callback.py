"""`CFDGCallback`: CFDG logging and generator checkpoints for stable-baselines3 training.

Who owns the refresh schedule: the buffer. :class:`~cfdg_aug.integrations.sb3.CFDGReplayBuffer`
refreshes inside ``add`` right after the transition that makes a refresh due is stored (SB3 calls
a callback's ``_on_step`` *before* storing the step's transition, so a callback-driven schedule
would always lag one step and would silently stop when the callback is left out). This callback
only observes: it registers a refresh hook on the buffer, and reports what happened.

Logged to the SB3 logger (``self.logger.record``, so TensorBoard/CSV/stdout as configured), under
``cfdg/``:

- after each refresh (recorded at the next callback event): ``refresh_index``, ``online_count``,
  ``fit_steps``, ``fit_final_loss`` (generator loss), ``fit_mean_loss``, ``fit_seconds``,
  ``sample_seconds``, ``guidance_seconds``, ``refresh_seconds`` (fit + guidance choice + sample),
  ``guidance``, ``n_synthetic_offline``,
  ``n_synthetic_online``;
- with ``fidelity=True``, after each refresh: ``fidelity/online_auc``, ``fidelity/online_mmd2``,
  ``fidelity/offline_auc``, ``fidelity/offline_mmd2`` (synthetic vs real pools; plus physics
  errors with ``fidelity_env_id``);
- at every rollout end: pool sizes ``pool/real_offline``, ``pool/real_online``,
  ``pool/synthetic_offline``, ``pool/synthetic_online``, ``num_refreshes`` and, when the buffer has
  sampled a mixed batch, the share of each source in the last batch (``batch/<source>``).

Feedback during a refresh (seconds to minutes inside one ``add``, during which SB3's own output
stops): while training, the callback sets the buffer's ``refresh_progress``. ``verbose=1`` prints a
line when each stage of a refresh starts and ends (``[CFDG] refresh 2: fitting generator (0/2000
steps)``, ``... done in 41.3s``), ``verbose=2`` also every 10%; ``refresh_progress=True`` draws tqdm
bars instead, a callable ``fn(stage, done, total)`` receives the stages itself. A buffer whose own
``refresh_progress`` is set keeps it unless the callback is given one. The buffer's setting is
restored when training ends.

Generator checkpoints: with ``save_path`` set, the generator is written every ``save_freq`` calls
(same counting as SB3's ``CheckpointCallback``: ``n_calls % save_freq == 0``) and at the end of
training to ``{save_path}/{name_prefix}_cfdg_generator_{num_timesteps}_steps.safetensors``. Use the
same ``save_freq``, ``save_path`` and ``name_prefix`` as a ``CheckpointCallback`` and each model zip
(and pickled replay buffer) gets its generator file beside it. A buffer restored with
``model.load_replay_buffer`` gets its generator back with ``buffer.load_generator(path)``.
Nothing is written before the first refresh (there is no fitted generator yet).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from cfdg_aug.buffer import RefreshStats
from cfdg_aug.generator import Progress, check_progress
from cfdg_aug.integrations.sb3.buffer import CFDGBufferMixin
from cfdg_aug.transitions import SOURCE_NAMES

_MIN_FIDELITY_N = 10  # refresh_fidelity leaves out a pool with fewer rows than this


def _env_id(vec_env: Any) -> str | None:
    """The registered id of a (vectorised) SB3 env's first env, or None."""
    try:
        spec = vec_env.get_attr("spec", indices=[0])[0]
    except Exception:  # noqa: BLE001 - any VecEnv that cannot tell: no rule, a classifier decides
        return None
    return getattr(spec, "id", None)


class VerboseRefreshProgress:
    """A refresh progress callable ``fn(stage, done, total)`` that prints SB3-verbose-style lines: one
    when a stage starts and one when it ends (with its duration); with ``every`` (a fraction, e.g.
    0.1) also each time another ``every`` of the stage is done."""

    def __init__(self, prefix: str = "[CFDG] ", every: float | None = None, file: Any = None) -> None:
        self.prefix, self.every, self.file = prefix, every, file
        self._stage: str | None = None
        self._start = 0.0
        self._next = 0

    def _print(self, text: str) -> None:
        print(f"{self.prefix}{text}", file=self.file if self.file is not None else sys.stdout, flush=True)

    def __call__(self, stage: str, done: int, total: int) -> None:
        unit = "rows" if "sampling" in stage else "steps"
        if done == 0 or stage != self._stage:
            self._stage, self._start = stage, time.perf_counter()
            self._next = max(1, int(total * self.every)) if self.every else total
            self._print(f"{stage} (0/{total} {unit})")
        if done >= total:
            self._print(f"{stage} done in {time.perf_counter() - self._start:.1f}s ({done}/{total} {unit})")
            self._stage = None
        elif self.every and done >= self._next:
            self._print(f"{stage} ({done}/{total} {unit})")
            self._next = done + max(1, int(total * self.every))


class CFDGCallback(BaseCallback):
    """Log CFDG refreshes and pool sizes; save the generator with the model's checkpoints.

    :param save_freq: save the generator every ``save_freq`` callback calls (0 = only at the end
        of training, and only when ``save_path`` is set). A ``save_freq > 0`` needs ``save_path``.
    :param save_path: folder for generator files (None = never save).
    :param name_prefix: file name prefix (match your ``CheckpointCallback``'s).
    :param log_prefix: logger key prefix.
    :param fidelity: after each refresh, compare the fresh synthetic pools with the real ones
        (``cfdg_aug.diagnostics.fidelity.refresh_fidelity``: classifier AUC and MMD^2 on at most
        ``fidelity_n`` rows per side, an int >= 10: ``refresh_fidelity`` measures no pool of fewer
        rows) and log them as ``{log_prefix}/fidelity/...``. Costs a few seconds per refresh.
    :param fidelity_env_id: also re-simulate synthetic transitions in this MuJoCo env (physics
        error; needs ``fidelity=True``). Synthetic actions are in SB3's [-1, 1] units, so this is
        only allowed when the action space bounds are [-1, 1] (true for the MuJoCo locomotion tasks).
    :param refresh_progress: how refreshes report their stages while training (the callback
        sets the buffer's ``refresh_progress``, and restores it at the end of training): None
        (default) follows ``verbose`` (1: a line when each stage starts and ends, 2: also every 10%;
        0: the buffer's own setting), ``False`` the buffer's own setting, ``True`` tqdm bars on
        stderr, a callable ``fn(stage: str, done: int, total: int)`` receives them.
    :param verbose: 1 prints a line per refresh stage, per refresh and per saved file.
    :raises ValueError: a bad argument, named, at construction (not at the first refresh, minutes
        into ``learn``).
    """

    def __init__(
        self,
        save_freq: int = 0,
        save_path: str | os.PathLike[str] | None = None,
        name_prefix: str = "rl_model",
        log_prefix: str = "cfdg",
        fidelity: bool = False,
        fidelity_n: int = 1000,
        fidelity_env_id: str | None = None,
        refresh_progress: Progress = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 0:
            raise ValueError(f"save_freq must be an int >= 0, got {save_freq!r}")
        if save_freq > 0 and save_path is None:
            raise ValueError(f"save_freq={save_freq} saves the generator into save_path, which is None: "
                             "give save_path, or leave save_freq=0")
        # Checked here, not in the refresh hook mid-learn(). Below 10 rows refresh_fidelity skips a pool
        # (classifier_auc fails below 5, and its held-out split would be 1-2 rows a class).
        if (isinstance(fidelity_n, bool) or not isinstance(fidelity_n, (int, np.integer))
                or fidelity_n < _MIN_FIDELITY_N):
            raise ValueError(f"fidelity_n must be an int >= {_MIN_FIDELITY_N} (rows per side), got {fidelity_n!r}")
        if fidelity_env_id is not None and not fidelity:
            raise ValueError(f"fidelity_env_id={fidelity_env_id!r} is used only by the fidelity measurement, "
                             "which is off: pass fidelity=True, or leave fidelity_env_id=None")
        if fidelity_env_id is not None and not (isinstance(fidelity_env_id, str) and fidelity_env_id):
            raise ValueError(f"fidelity_env_id must be a non-empty env id string or None, got {fidelity_env_id!r}")
        check_progress("refresh_progress", refresh_progress)
        self.refresh_progress = refresh_progress
        self.save_freq = save_freq
        self.save_path = Path(save_path) if save_path is not None else None
        self.name_prefix = name_prefix
        self.log_prefix = log_prefix
        self.fidelity = bool(fidelity)
        self.fidelity_n = int(fidelity_n)
        self.fidelity_env_id = fidelity_env_id
        self.fidelity_history: list[dict[str, float]] = []
        """Fidelity metrics per refresh (with ``fidelity=True``), in order."""
        self.refreshes: list[RefreshStats] = []
        """Every refresh seen during training, in order (also handy in tests and notebooks)."""
        self.saved_paths: list[Path] = []
        self._pending: list[RefreshStats] = []
        self._pending_fidelity: list[dict[str, float]] = []
        self._buffer: CFDGBufferMixin | None = None
        self._saved_progress: tuple[CFDGBufferMixin, Progress] | None = None

    # --- wiring ----------------------------------------------------------------------------------
    def _init_callback(self) -> None:
        buf = getattr(self.model, "replay_buffer", None)
        if not isinstance(buf, CFDGBufferMixin):
            raise TypeError(
                "CFDGCallback needs a model whose replay_buffer is a CFDGReplayBuffer or CFDGDictReplayBuffer (pass "
                f"replay_buffer_class=CFDGReplayBuffer), got {type(buf).__name__}"
            )
        if self._buffer is not None and self._buffer is not buf:
            self._buffer.remove_refresh_hook(self._on_refresh)
        self._buffer = buf
        buf.add_refresh_hook(self._on_refresh)  # idempotent across repeated learn() calls
        self._install_progress(buf)
        if buf.augmented is not None and not buf.termination_given:
            # The buffer is built from spaces only; the model's env tells which termination rule
            # synthetic transitions must obey (cfdg_aug.termination), as the d3rlpy buffer does.
            env_id = _env_id(self.training_env)
            if env_id is not None:
                buf.augmented.set_termination(env_id)
        if self.save_path is not None:
            self.save_path.mkdir(parents=True, exist_ok=True)
        if self.fidelity and buf.augmented is None:
            raise ValueError("fidelity: this buffer holds image observations without augmentation; nothing to measure")
        if self.fidelity_env_id is not None:
            space = buf.action_space
            if not isinstance(space, spaces.Box):
                raise ValueError("fidelity_env_id: the physics check needs a Box action space")
            if not (np.all(np.asarray(space.low) == -1.0) and np.all(np.asarray(space.high) == 1.0)):
                raise ValueError(
                    "fidelity_env_id: the physics check steps the env with buffer actions, which SB3 scales to "
                    "[-1, 1]; this env's action bounds differ, so leave fidelity_env_id=None"
                )

    def _install_progress(self, buf: CFDGBufferMixin) -> None:
        """Point the buffer's ``refresh_progress`` at what this callback was asked for (see the class)."""
        self._restore_progress()
        wanted: Progress = self.refresh_progress
        if wanted is None:
            if self.verbose < 1 or buf.refresh_progress:
                return  # silent, or the buffer's own setting wins
            wanted = VerboseRefreshProgress(every=0.1 if self.verbose >= 2 else None)
        elif wanted is False:
            return
        self._saved_progress = (buf, buf.refresh_progress)
        buf.refresh_progress = wanted

    def _restore_progress(self) -> None:
        if self._saved_progress is not None:
            buf, previous = self._saved_progress
            buf.refresh_progress = previous
            self._saved_progress = None

    def _on_refresh(self, stats: RefreshStats) -> None:
        self.refreshes.append(stats)
        self._pending.append(stats)
        if self.fidelity and self._buffer is not None:
            self._pending_fidelity.append(self._measure_fidelity(stats))
        if self.verbose >= 1:
            loss = stats.fit.final_loss if stats.fit is not None else float("nan")
            print(
                f"[CFDG] refresh {stats.refresh_index} at {stats.online_count} online transitions: "
                f"loss {loss:.4f}, fit {stats.fit_seconds:.1f}s, sample {stats.sample_seconds:.1f}s"
            )

    def _measure_fidelity(self, stats: RefreshStats) -> dict[str, float]:
        from cfdg_aug.diagnostics.fidelity import refresh_fidelity
        from cfdg_aug.transitions import SOURCE_SYNTHETIC_OFFLINE, SOURCE_SYNTHETIC_ONLINE

        assert self._buffer is not None and self._buffer.augmented is not None
        core = self._buffer.augmented

        def pool(i: int):  # type: ignore[no-untyped-def]
            return core.pool_data(i) if core.pool_sizes[SOURCE_NAMES[i]] else None

        metrics = refresh_fidelity(
            core.offline_data() if core.num_offline else None, core.online_data() if core.num_online else None,
            pool(SOURCE_SYNTHETIC_OFFLINE), pool(SOURCE_SYNTHETIC_ONLINE), env_id=self.fidelity_env_id,
            n=self.fidelity_n, seed=int(stats.refresh_index), prefix="fidelity/",
        )
        self.fidelity_history.append(metrics)
        return metrics

    # --- logging ---------------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.log_prefix}/{name}"

    def _flush_refreshes(self) -> None:
        for stats in self._pending:
            for k, v in stats.as_dict().items():
                if v is not None:
                    self.logger.record(self._key(k), v)
            self.logger.record(self._key("refresh_seconds"),
                               stats.fit_seconds + stats.guidance_seconds + stats.sample_seconds)
        self._pending.clear()
        for metrics in self._pending_fidelity:
            for k, v in metrics.items():
                self.logger.record(self._key(k), v)
        self._pending_fidelity.clear()

    def _record_pools(self) -> None:
        buf = self._buffer
        if buf is None:
            return
        for name, size in buf.pool_sizes.items():
            self.logger.record(self._key(f"pool/{name}"), size)
        self.logger.record(self._key("num_refreshes"), buf.num_refreshes)
        src = buf.last_sources
        if src is not None and len(src):
            counts = np.bincount(src.astype(np.int64), minlength=len(SOURCE_NAMES))
            for name, c in zip(SOURCE_NAMES, counts, strict=True):
                self.logger.record(self._key(f"batch/{name}"), float(c) / len(src))

    # --- checkpoints -----------------------------------------------------------------------------
    def generator_path(self, num_timesteps: int) -> Path:
        """Where the generator of a checkpoint at ``num_timesteps`` goes."""
        assert self.save_path is not None
        return self.save_path / f"{self.name_prefix}_cfdg_generator_{num_timesteps}_steps.safetensors"

    def _save(self) -> None:
        if self.save_path is None or self._buffer is None:
            return
        path = self.generator_path(self.num_timesteps)
        if path in self.saved_paths:
            return
        if self._buffer.save_generator(path):
            self.saved_paths.append(path)
            if self.verbose >= 1:
                print(f"[CFDG] saved generator to {path}")

    # --- SB3 events ------------------------------------------------------------------------------
    def _on_step(self) -> bool:
        if self._pending:
            self._flush_refreshes()
        if self.save_freq > 0 and self.n_calls % self.save_freq == 0:
            self._save()
        return True

    def _on_rollout_end(self) -> None:
        # A refresh triggered by the last add of a rollout is reported here, before the gradient steps.
        self._flush_refreshes()
        self._record_pools()

    def _on_training_end(self) -> None:
        self._flush_refreshes()
        self._record_pools()
        self._save()
        self._restore_progress()


__all__ = ["CFDGCallback", "VerboseRefreshProgress"]
