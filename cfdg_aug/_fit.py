"""Small regression models fitted at each generator fit (dynamics, behaviour): one MLP shape and
one training loop, so the two cannot drift apart."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def cpu_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded to ``seed`` and restore it afterwards: module
    initialisation from our own stream, the host's RNGs untouched. ``torch.manual_seed`` would also
    reseed every CUDA generator, which ``fork_rng(devices=[])`` does not restore: a generator fit
    would silently reset a GPU agent's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def silu_mlp(d_in: int, d_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` with SiLU, then a linear output (state-dict keys
    ``0.weight`` ... as saved checkpoints expect)."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def fit_cosine_adam(params: list[nn.Parameter], batch_loss: Callable[[torch.Tensor], torch.Tensor], n: int, *,
                    steps: int, generator: torch.Generator, batch_size: int, lr: float,
                    on_step: Callable[[int], object] | None = None) -> float:
    """``steps`` Adam steps on ``batch_loss(idx)`` for ``batch_size`` row indices drawn uniformly from
    ``range(n)``, the learning rate cosine-decayed from ``lr`` to 0; returns the last loss."""
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = batch_loss(torch.randint(n, (batch_size,), generator=generator))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(1)
    return float(loss.item())
