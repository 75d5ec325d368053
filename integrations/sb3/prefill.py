"""Offline phase for stable-baselines3: fill the offline pool, optionally pre-train the agent on it.

SB3 has no offline RL phase. :func:`prefill_offline` loads a dataset (D4RL-layout hdf5 file, a
Minari id, an ``OfflineDataset``, a ``TransitionBatch`` or a mapping of arrays) into the
``CFDGReplayBuffer``'s offline pool, in SB3's buffer units (actions scaled to [-1, 1]).
:func:`pretrain_offline` then runs the agent's own ``train(gradient_steps, batch_size)`` on batches
from the buffer before any environment step.

What pre-training does and does NOT replicate, compared to a real offline RL algorithm:

- It does: N gradient steps of the unchanged online algorithm (SAC/TD3/TQC... losses, target
  network updates, SAC's entropy tuning) on batches the buffer draws; with no online data yet
  those batches are 100% offline data (the mix rule hands the online share to the offline pool).
- It does NOT add any conservatism or behaviour regularisation (no CQL penalty, no IQL expectile
  value/advantage-weighted policy, no TD3+BC term). Off-policy actor-critics trained purely
  offline overestimate Q on out-of-distribution actions, so the pre-trained policy may be worse
  than the dataset's behaviour policy; the critic and entropy temperature still get a useful warm
  start. Use d3rlpy (``cfdg_aug.integrations.d3rlpy``) for a genuine offline-to-online pipeline
  (IQL, PEX, APL).
- It does not advance ``model.num_timesteps``, so SB3's learning-rate schedule (driven by
  ``_current_progress_remaining``, 1.0 before ``learn``), ``learning_starts`` and logging steps
  behave as if no pre-training had happened; ``model._n_updates`` does count the steps. Pass
  ``learning_starts=0`` to ``SAC(...)`` if the first online actions should come from the
  pre-trained policy rather than uniform random exploration.
- No evaluation, early stopping or checkpointing happens during pre-training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from cfdg_aug.integrations.sb3.buffer import CFDGBufferMixin


@dataclass
class PretrainStats:
    """What :func:`pretrain_offline` did."""

    gradient_steps: int
    batch_size: int
    seconds: float
    n_updates_before: int
    n_updates_after: int


def _buffer_of(target: CFDGBufferMixin | OffPolicyAlgorithm) -> CFDGBufferMixin:
    buf = target if isinstance(target, CFDGBufferMixin) else getattr(target, "replay_buffer", None)
    if not isinstance(buf, CFDGBufferMixin):
        raise TypeError(
            "expected a CFDGReplayBuffer / CFDGDictReplayBuffer or an SB3 model built with "
            "replay_buffer_class=CFDGReplayBuffer (or CFDGDictReplayBuffer), got "
            f"{type(target).__name__} (replay_buffer: {type(buf).__name__})"
        )
    return buf


def prefill_offline(
    target: CFDGBufferMixin | OffPolicyAlgorithm,
    data: Any,
    *,
    actions_scaled: bool = False,
    clip_actions: bool = True,
    limit: int | None = None,
) -> int:
    """Put an offline dataset into the buffer's offline pool; returns the number of transitions added.

    :param target: the buffer, or a model whose ``replay_buffer`` is a ``CFDGReplayBuffer``.
    :param data: a spec for ``cfdg_aug.datasets.load_dataset`` (a D4RL-layout hdf5 path, a Minari
        dataset id...), an ``OfflineDataset`` (e.g. ``cfdg_aug.datasets.load_embedded()``), a
        ``TransitionBatch`` or a mapping of D4RL-named arrays: observations (N, obs_dim),
        actions (N, act_dim) in the env's units, rewards (N,), next_observations (N, obs_dim),
        terminals (N,), optional timeouts (N,).
    :param actions_scaled: the actions are already in SB3's [-1, 1] buffer units (else they are
        scaled from the action space's bounds, as ``policy.scale_action`` does).
    :param clip_actions: clip out-of-bounds actions with a warning (else raise).
    :param limit: keep only the first ``limit`` transitions.
    """
    buf = _buffer_of(target)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        from cfdg_aug.integrations.sb3.buffer import _as_transition_batch

        data = _as_transition_batch(data, buf.obs_layout)[:limit]
    return buf.add_offline(data, actions_scaled=actions_scaled, clip_actions=clip_actions)


def pretrain_offline(
    model: OffPolicyAlgorithm,
    gradient_steps: int,
    *,
    batch_size: int | None = None,
    chunk_size: int = 1000,
    progress: bool = False,
) -> PretrainStats:
    """Run ``model.train`` for ``gradient_steps`` steps on the buffer before online learning.

    Calls ``model.train(gradient_steps=k, batch_size=batch_size)`` in chunks of ``chunk_size``
    (a tqdm bar with ``progress``). Needs offline data in the buffer (:func:`prefill_offline`).
    If the model has no logger yet (``learn`` not called), a silent logger is used for the duration
    and removed afterwards, so ``learn`` still sets up the configured one. See the module docstring
    for what this does and does not replicate.
    """
    buf = _buffer_of(model)
    if isinstance(gradient_steps, bool) or not isinstance(gradient_steps, int) or gradient_steps < 0:
        raise ValueError(f"gradient_steps must be an int >= 0, got {gradient_steps!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if (buf.augmented is None or buf.augmented.num_offline == 0) and buf.size() == 0:  # type: ignore[attr-defined]
        raise ValueError("pretrain_offline needs data in the buffer: call prefill_offline first")
    bs = int(batch_size if batch_size is not None else model.batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    had_logger = getattr(model, "_logger", None) is not None
    if not had_logger:
        model._logger = Logger(folder=None, output_formats=[])
    n_before = int(getattr(model, "_n_updates", 0))
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=gradient_steps, desc="offline pre-training", unit="step")
    try:
        done = 0
        while done < gradient_steps:
            k = min(chunk_size, gradient_steps - done)
            model.train(gradient_steps=k, batch_size=bs)
            done += k
            if bar is not None:
                bar.update(k)
    finally:
        if bar is not None:
            bar.close()
        if not had_logger:
            del model._logger
    return PretrainStats(
        gradient_steps=gradient_steps, batch_size=bs, seconds=time.perf_counter() - t0,
        n_updates_before=n_before, n_updates_after=int(getattr(model, "_n_updates", 0)),
    )


__all__ = ["PretrainStats", "prefill_offline", "pretrain_offline"]
