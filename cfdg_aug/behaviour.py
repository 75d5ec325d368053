"""A behaviour model p(a | s, label) for ``CFDGConfig.behaviour_quantile``: the generated
action must be one the data's policies could have taken in the generated state.

Why: a diffusion model over whole transitions matches the joint distribution of (s, a) (a
two-sample classifier barely tells it from real data) long before it matches the conditional
a | s, which is what an actor learns. Measured at the first refresh of a Study 2 hopper-medium run
(small profile; docs/results/study2/diagnostics/actions): under the pre-trained IQL policy,
generated actions have a median log-likelihood of -1.5 against +0.4 for real ones, and a third of
them fall below the 5% quantile of the real rows. IQL's actor loss, -mean(exp(beta A(s, a)) log
pi(a | s)), is then driven by those rows (-5.6 to -6.0 per synthetic row against +0.07 to +0.16 per
real one). No sampler setting fixes it (Heun 32 / 128 steps, sigma_min, guidance: docs/fidelity.md,
"Actions a policy would take").

So at each fit a Gaussian MLP is fitted to the real (s, a) pairs of each label, and
:meth:`CFDGGenerator.sample` keeps only generated rows whose action is no farther from the model's
mean in that state, in the model's standard deviations there (:meth:`BehaviourModel.mahalanobis`),
than all but the ``behaviour_quantile`` share of the real rows' actions are (rejection sampling:
more rows are drawn to replace the rejected ones). Real data passes at 1 - quantile by
construction; with the defaults (10,000 steps, quantile 0.2) about half of the generated rows pass
on hopper, and the share below the IQL policy's real 5% quantile falls from 34% to 11%.

The distance, not the log-likelihood (``CFDGConfig.behaviour_score``): log p(a | s) also carries
-sum log sigma(s), so a likelihood threshold rejects more rows in states where the data's policy
is broad and reshapes the generated states, which a classifier then tells from real ones (online
AUC 0.66 against 0.60 on walker2d, mean of 5 evaluations of one fit; 0.59 and 0.58 on hopper;
docs/fidelity.md, "Which statistic the filter thresholds"). Under the IQL policy the two keep rows
of about the same quality.

Shapes: :meth:`BehaviourModel.log_prob` and :meth:`BehaviourModel.mahalanobis` take (N, obs_dim),
(N, act_dim) and a label, and return (N,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfdg_aug._fit import fit_cosine_adam, silu_mlp

#: Labels the model conditions on (as in the generator: 0 offline, 1 online).
NUM_LABELS = 2
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class BehaviourModel(nn.Module):
    """Gaussian MLP on standardised [s, one-hot label] -> mean and log-std of standardised a
    (SiLU, ``depth`` hidden layers of ``width``), fitted by maximum likelihood."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mean: torch.Tensor
    act_std: torch.Tensor
    label_prior: torch.Tensor

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.net = silu_mlp(obs_dim + NUM_LABELS, 2 * act_dim, width, depth)
        self.act_dim = act_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_mean", torch.zeros(act_dim))
        self.register_buffer("act_std", torch.ones(act_dim))
        self.register_buffer("label_prior", torch.full((NUM_LABELS,), 1.0 / NUM_LABELS))

    def _dist(self, obs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([(obs - self.obs_mean) / self.obs_std, F.one_hot(labels, NUM_LABELS).to(obs.dtype)], dim=1)
        mean, log_std = self.net(x).chunk(2, dim=1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _z(self, obs: torch.Tensor, act: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(standardised action error (N, act_dim), log-std (N, act_dim)) of ``act`` given ``obs``."""
        mean, log_std = self._dist(obs, labels)
        return ((act - self.act_mean) / self.act_std - mean) * torch.exp(-log_std), log_std

    def _log_prob(self, obs: torch.Tensor, act: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z, log_std = self._z(obs, act, labels)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    def fit(self, obs: np.ndarray, act: np.ndarray, labels: np.ndarray, *, steps: int,
            generator: torch.Generator, batch_size: int = 256, lr: float = 1e-3, refit: bool = False,
            on_step: Callable[[int], object] | None = None) -> float:
        """Maximum likelihood on real (s, a, label), Adam with cosine decay; returns the final mean
        negative log-likelihood (standardised units). ``refit``: keep the weights and the
        standardisation (a warm start on data that grew), else standardise on this data."""
        o = torch.from_numpy(np.asarray(obs, np.float32))
        a = torch.from_numpy(np.asarray(act, np.float32))
        lab = torch.from_numpy(np.asarray(labels, np.int64))
        if not refit:
            self.obs_mean.copy_(o.mean(0))
            self.obs_std.copy_(o.std(0).clamp_min(1e-6))
            self.act_mean.copy_(a.mean(0))
            self.act_std.copy_(a.std(0).clamp_min(1e-6))
        counts = torch.bincount(lab, minlength=NUM_LABELS).float()
        self.label_prior.copy_(counts / counts.sum())
        return fit_cosine_adam(list(self.net.parameters()), lambda idx: -self._log_prob(o[idx], a[idx], lab[idx]).mean(),
                               len(o), steps=steps, generator=generator, batch_size=batch_size, lr=lr,
                               on_step=on_step)

    @torch.no_grad()
    def log_prob(self, obs: np.ndarray, act: np.ndarray, label: int | None) -> np.ndarray:
        """(N,) log-likelihood of each action given its state, under the policy of ``label``, or
        (``label=None``) under the mixture of the labels' policies weighted by their data shares."""
        o = torch.from_numpy(np.asarray(obs, np.float32))
        a = torch.from_numpy(np.asarray(act, np.float32))
        if label is not None:
            return self._log_prob(o, a, torch.full((len(o),), int(label), dtype=torch.int64)).numpy()
        per_label = torch.stack([self._log_prob(o, a, torch.full((len(o),), k, dtype=torch.int64))
                                 + torch.log(self.label_prior[k].clamp_min(1e-12)) for k in range(NUM_LABELS)])
        return torch.logsumexp(per_label, dim=0).numpy()

    @torch.no_grad()
    def mahalanobis(self, obs: np.ndarray, act: np.ndarray, label: int | None) -> np.ndarray:
        """(N,) squared distance of each action from the policy's mean in that state, in the
        policy's own standard deviations there: sum_j ((a_j - mu_j(s)) / sigma_j(s))^2, under the
        policy of ``label``, or (``label=None``) the smallest over the policies of the labels that had
        data at the fit.

        Unlike :meth:`log_prob`, it does not rank states: log p(a | s) also carries
        -sum_j log sigma_j(s), so a likelihood threshold rejects every action in states where the
        data's policy is broad and keeps loose ones where it is narrow, which reshapes the
        distribution of generated states (docs/fidelity.md, "Which statistic the filter thresholds")."""
        o = torch.from_numpy(np.asarray(obs, np.float32))
        a = torch.from_numpy(np.asarray(act, np.float32))

        def dist2(k: int) -> torch.Tensor:
            return self._z(o, a, torch.full((len(o),), k, dtype=torch.int64))[0].pow(2).sum(dim=1)

        if label is not None:
            return dist2(int(label)).numpy()
        # Only the labels that had data: an untrained policy head would otherwise pass anything near it.
        seen = [k for k in range(NUM_LABELS) if float(self.label_prior[k]) > 0]
        return torch.stack([dist2(k) for k in seen]).amin(dim=0).numpy()


__all__ = ["BehaviourModel", "NUM_LABELS"]
