"""A learned dynamics model s' - s = f(s, a) for ``CFDGConfig.next_obs_target="model"``.

Why: a diffusion model over whole transitions learns the joint distribution well long before it
learns the near-deterministic map (s, a) -> s' precisely. With the small profile's budgets the
generated s' of walker2d was unrelated to its (s, a) (next-state physics error, median over
transitions of the largest relative error, 2.6 at 6,000 steps, i.e. worse than s' drawn at random
from the data's changes), while a plain regression MLP fitted for the same CPU time reached ~0.4
(docs/fidelity.md, "Next state"). A learner bootstraps through s': wrong dynamics in a third of
its batch teach its critic a world that does not exist. So with ``next_obs_target="model"`` the
classifier-free-guided diffusion model generates (s, a, r) for the label asked for, and s' comes
from this regression model, fitted on every real transition at each refresh, as model-based
methods (MBPO) generate their rollouts. For deterministic environments (MuJoCo) this loses
nothing; for stochastic ones, ``"delta"`` keeps s' a sample of the diffusion model.

Shapes: :meth:`predict` (N, obs_dim), (N, act_dim) -> (N, obs_dim) next observations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfdg_aug._fit import fit_cosine_adam, silu_mlp


class DynamicsModel(nn.Module):
    """MLP on standardised [s, a] -> standardised s' - s (SiLU, ``depth`` hidden layers of ``width``)."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.net = silu_mlp(obs_dim + act_dim, obs_dim, width, depth)
        self.register_buffer("x_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("x_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("y_mean", torch.zeros(obs_dim))
        self.register_buffer("y_std", torch.ones(obs_dim))

    def fit(self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, *, steps: int, generator: torch.Generator,
            batch_size: int = 256, lr: float = 1e-3, refit: bool = False,
            on_step: Callable[[int], object] | None = None) -> float:
        """Mean-squared-error regression on real transitions, Adam with cosine decay; returns the final
        loss (standardised units). ``refit``: keep the current weights and standardisation (a warm
        start on data that grew), else standardise on this data."""
        x = torch.from_numpy(np.concatenate([obs, act], axis=1).astype(np.float32))
        y = torch.from_numpy((next_obs - obs).astype(np.float32))
        if not refit:
            self.x_mean.copy_(x.mean(0))
            self.x_std.copy_(x.std(0).clamp_min(1e-6))
            self.y_mean.copy_(y.mean(0))
            self.y_std.copy_(y.std(0).clamp_min(1e-6))
        xs, ys = (x - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std
        return fit_cosine_adam(list(self.net.parameters()), lambda idx: F.mse_loss(self.net(xs[idx]), ys[idx]),
                               len(xs), steps=steps, generator=generator, batch_size=batch_size, lr=lr,
                               on_step=on_step)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.concatenate([obs, act], axis=1).astype(np.float32))
        delta = self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean
        return (obs + delta.numpy()).astype(np.float32)


__all__ = ["DynamicsModel"]
