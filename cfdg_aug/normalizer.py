"""Per-dimension standardisation of flat transitions, fitted on real data (offline + online together).

Diffusion is run in normalised space (EDM assumes sigma_data = 1 after normalisation, as in SynthER).
The normaliser also remembers the real data's per-dimension range, so generated samples can be
clipped back into it (rewards in particular, see ``CFDGConfig.clip_rewards``).
"""

from __future__ import annotations

import numpy as np
import torch

# A dimension whose std is below this is treated as constant: it is centred but not scaled, so it
# maps to (near) zero instead of exploding, and un-normalising restores the constant exactly.
CONSTANT_STD = 1e-6


class Normalizer:
    """z = (x - mean) / std per column; constant columns get std = 1.

    Shapes: ``mean``, ``std``, ``low``, ``high`` are (D,) float32.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        shapes = {a.shape for a in (self.mean, self.std, self.low, self.high)}
        if len(shapes) != 1 or self.mean.ndim != 1:
            raise ValueError(f"normaliser arrays must all have shape (D,), got {sorted(shapes)}")

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalizer:
        """Fit on an (N, D) matrix of real flat transitions (N >= 1)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"Normalizer.fit needs an (N, D) matrix with N >= 1, got shape {x.shape}")
        std = x.std(axis=0)
        std = np.where(std < CONSTANT_STD, 1.0, std)
        return cls(x.mean(axis=0), std, x.min(axis=0), x.max(axis=0))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32, copy=False)

    def unnormalize(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float32) * self.std + self.mean).astype(np.float32, copy=False)

    def state_tensors(self, prefix: str = "normalizer.") -> dict[str, torch.Tensor]:
        return {prefix + k: torch.from_numpy(getattr(self, k).copy()) for k in ("mean", "std", "low", "high")}

    @classmethod
    def from_state_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "normalizer.") -> Normalizer:
        try:
            # Copies: on CPU ``.numpy()`` shares the caller's memory, and an in-place change of their
            # tensors (or of ours) would reach the other side.
            return cls(*(tensors[prefix + k].cpu().numpy().copy() for k in ("mean", "std", "low", "high")))
        except KeyError as e:
            raise ValueError(f"checkpoint is missing normaliser tensor {e.args[0]!r}") from None
