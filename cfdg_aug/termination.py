"""Which generated transitions are terminal: the env's own rule where it is known, else a classifier.

A diffusion model does not generate a rare binary event well. Terminals are ~0.05-0.25% of the
rows on hopper and walker2d; standardised, the done column is a spike ~20 standard deviations out,
and sampled and thresholded it came out 0 in every row (docs/fidelity.md, "Terminals"). Yet
terminals decide what a critic learns about falling: bootstrapping through a fall as if it were
safe over-values the states before it. So, as model-based RL does (MBPO's static termination
functions), the done flag of a generated (s, a, s') is computed from the transition rather than
generated:

- :func:`termination_rule`: the env's own rule for the MuJoCo locomotion tasks (Gymnasium v4/v5
  ``is_healthy`` read off the next observation), exact on the real data (0 mismatches on the
  shared hopper and walker2d datasets, ``tests/test_termination.py``);
- :class:`TerminationClassifier`: for any other env, a small MLP fitted on the real transitions,
  ``p(done | s, a, s')``, with terminal rows up-weighted during training and the decision threshold
  chosen on the training data so the predicted terminal rate equals the real one.

A :data:`TerminationFn` maps (obs (N, obs_dim), act (N, act_dim), next_obs (N, obs_dim)) to a
(N,) bool array.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

TerminationFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# --- the env's own rules ---------------------------------------------------------------------------
def _hopper(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    # Hopper-v4 is_healthy: every state entry but x and z in (-100, 100), z > 0.7, |angle| < 0.2.
    z, angle = nxt[:, 0], nxt[:, 1]
    healthy = np.all(np.abs(nxt[:, 1:]) < 100.0, axis=1) & (z > 0.7) & (angle > -0.2) & (angle < 0.2)
    return ~healthy


def _walker2d(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    # Walker2d-v4 is_healthy: 0.8 < z < 2.0 and -1 < angle < 1.
    z, angle = nxt[:, 0], nxt[:, 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


def _ant(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    # Ant-v4 is_healthy: a finite state and 0.2 <= z <= 1.0 (z is the first observation entry).
    z = nxt[:, 0]
    return ~(np.isfinite(nxt).all(axis=1) & (z >= 0.2) & (z <= 1.0))


def _never(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    return np.zeros(nxt.shape[0], dtype=bool)


_RULES: dict[str, tuple[TerminationFn, int]] = {
    # family: (rule, observation size it applies to)
    "hopper": (_hopper, 11), "walker2d": (_walker2d, 17), "halfcheetah": (_never, 17), "ant": (_ant, 27),
}


def termination_rule(env_id: str, obs_dim: int | None = None) -> TerminationFn | None:
    """The env's termination rule for a Gymnasium MuJoCo locomotion id or D4RL/Minari name
    (``Hopper-v4``, ``hopper-medium-v2``), or None when it is not known here (then fit a
    :class:`TerminationClassifier`). ``obs_dim``: the observation size, checked against the
    rule's (a rule is only returned for the default observation layout)."""
    from cfdg_aug.datasets.scores import env_family

    try:
        family = env_family(env_id)
    except ValueError:
        return None
    rule = _RULES.get(family)
    if rule is None or (obs_dim is not None and obs_dim != rule[1]):
        return None
    return rule[0]


# --- the classifier --------------------------------------------------------------------------------
class TerminationClassifier(nn.Module):
    """p(done | s, a, s') as a 2-layer MLP on standardised [s, a, s' - s].

    :meth:`fit` trains it on real rows with the terminal rows up-weighted to half of the loss
    (terminals are rare: unweighted, the classifier learns "never"), then sets :attr:`threshold` to
    the quantile of the predicted probabilities on the training rows that reproduces the real
    terminal rate. Shapes: ``forward`` (N, in_dim) -> (N,) logits.
    """

    threshold: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, in_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.register_buffer("threshold", torch.tensor(0.5))

    @staticmethod
    def features(obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, act, nxt - obs], axis=1).astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def fit(self, obs: np.ndarray, act: np.ndarray, nxt: np.ndarray, done: np.ndarray, *,
            generator: torch.Generator, steps: int = 1000, batch_size: int = 256, lr: float = 3e-3) -> float:
        """Train on real transitions; returns the final training loss. ``done`` (N,) in {0, 1}."""
        x = torch.from_numpy(self.features(obs, act, nxt))
        y = torch.from_numpy(np.asarray(done, dtype=np.float32))
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))
        pos = int(y.sum().item())
        if pos == 0 or pos == len(y):  # one class only: the rule is constant
            self.threshold.fill_(-math.inf if pos else math.inf)
            return 0.0
        # Half of each batch's loss weight on terminal rows: sample them with probability 1/2.
        w = torch.where(y > 0.5, 0.5 / pos, 0.5 / (len(y) - pos))
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=1e-4)
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.multinomial(w, batch_size, replacement=True, generator=generator)
            loss = nn.functional.binary_cross_entropy_with_logits(self(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            p = torch.sigmoid(self(x))
        # The threshold that labels as many training rows terminal as there are real terminals.
        self.threshold.fill_(float(torch.sort(p, descending=True).values[pos - 1]))
        return float(loss.item())

    @torch.no_grad()
    def predict(self, obs: np.ndarray, act: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """(N,) bool: terminal or not."""
        p = torch.sigmoid(self(torch.from_numpy(self.features(obs, act, nxt))))
        return (p >= self.threshold).numpy()


__all__ = ["TerminationClassifier", "TerminationFn", "termination_rule"]
