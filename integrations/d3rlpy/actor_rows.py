"""Train an IQL actor on the real rows of a CFDG batch only; the critic and value function see all rows.

Why: in Study 2 (docs/results/README.md) synthetic rows made IQL worse on hopper in every seed, with
the real online share kept as without augmentation (``real_mix="keep_online"``) too. IQL's actor is
advantage-weighted behaviour cloning, ``-mean(exp(beta * A(s, a)) * log pi(a | s))``: on a synthetic
(s, a) the advantage is the critic's extrapolation and the action a sample of a generator, so the
actor may clone exactly the generated actions the critic over-values. Restricting the actor to the
real rows keeps what synthetic data can give the critic (more (s, a, r, s') to fit) and removes that
path. Measured (Study 2, hopper seeds 0-3): with the actor on all rows cfdg ended 4-46 points below
``none``; on the real rows only, level with it (-3 to +8). This is a departure from the paper (which
trains both on the mixed batch): the small IQL profile uses it (``actor_data="real"``), the paper
profile does not (``cfdg-aug run --set actor_data=all`` for the paper's choice).

With d3rlpy directly::

    buffer = CFDGReplayBuffer(InfiniteBuffer(), env=env, offline_dataset=data)
    iql.build_with_env(env)
    restrict_actor_to_leading_rows(iql.impl, real_rows_of(buffer))
    iql.fit_online(env, buffer=buffer, ...)

How: :class:`CFDGReplayBuffer` returns batches ordered by source (real offline, real online, then
synthetic) and records ``last_source_counts``; :func:`restrict_actor_to_leading_rows` wraps an IQL
impl's ``compute_actor_loss`` so it uses the first ``rows()`` rows of the batch. Shapes: a batch of
``B`` rows gives the actor ``rows() <= B`` rows; the policy is still evaluated on all ``B`` states
(d3rlpy computes it before the loss) and the extra rows are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from d3rlpy.models.torch import ActionOutput
from d3rlpy.torch_utility import CudaGraphWrapper, TorchMiniBatch

__all__ = ["restrict_actor_to_leading_rows", "real_rows_of"]


def _head(x: Any, n: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, (tuple, list)):
        return type(x)(_head(v, n) for v in x)
    return x


def _head_batch(batch: TorchMiniBatch, n: int) -> TorchMiniBatch:
    return dataclasses.replace(batch, **{f.name: _head(getattr(batch, f.name), n)
                                         for f in dataclasses.fields(batch) if f.name not in ("device", "numpy_batch")})


def restrict_actor_to_leading_rows(impl: Any, rows: Callable[[], int | None]) -> None:
    """Make ``impl.compute_actor_loss`` (an IQL-family impl: ``(batch, action)``) use the
    first ``rows()`` rows of each batch; ``None``, 0 or ``>= B`` keeps the whole batch.

    Raises:
        ValueError: ``impl`` was built with ``compile_graph=True`` on CUDA. d3rlpy then replays a
            CUDA graph captured at the first update, with the row count of that batch, so the
            restriction would silently stop following the batch."""
    if isinstance(getattr(impl, "_compute_actor_grad", None), CudaGraphWrapper):
        raise ValueError("restrict_actor_to_leading_rows needs an algorithm built with compile_graph=False: "
                         "a captured CUDA graph fixes the actor's row count at its first update")
    original = impl.compute_actor_loss

    def compute_actor_loss(batch: TorchMiniBatch, action: ActionOutput) -> Any:
        n = rows()
        size = int(batch.actions.shape[0])
        if not n or n >= size:
            return original(batch, action)
        logstd = action.logstd
        if logstd is not None and logstd.shape[0] == size:  # per-state std; IQL's is one parameter
            logstd = logstd[:n]
        return original(_head_batch(batch, n), ActionOutput(action.mu[:n], action.squashed_mu[:n], logstd))

    impl.compute_actor_loss = compute_actor_loss


def real_rows_of(buffer: Any) -> Callable[[], int | None]:
    """``rows()`` for :func:`restrict_actor_to_leading_rows`: the real rows of ``buffer``'s last batch
    (a :class:`CFDGReplayBuffer`; ``None`` before its first batch)."""
    def rows() -> int | None:
        counts = getattr(buffer, "last_source_counts", None)
        return None if counts is None else int(counts[0]) + int(counts[1])
    return rows
