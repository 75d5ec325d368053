"""Deterministic actions of a stable-baselines3 SAC / TQC agent (.zip), without stable-baselines3.

The zip's ``policy.pth`` is a plain torch state dict, read with ``torch.load(weights_only=True)``
(no unpickling of code); its ``data`` member is JSON, read only for the policy class and kwargs.
The actor is rebuilt in torch: ``latent_pi`` (Linear + ReLU layers, sizes read from the weights),
``mu`` (Linear), deterministic action ``tanh(mu)`` rescaled to the action bounds, which is what
``model.predict(obs, deterministic=True)`` computes for SB3's SAC and sb3-contrib's TQC with the
default MLP policy. This keeps stable-baselines3 out of ``cfdg_aug`` core (layering rule) and
is faster per step than ``predict``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfdg_aug._io import file_sha256  # noqa: F401  (re-exported: make-dataset records the policy zip's hash)


class PolicyError(ValueError):
    """A policy file cannot be used; the message names the file and what was expected."""


class SB3Actor:
    """Deterministic squashed-Gaussian actor of an SB3 SAC/TQC zip.

    Args:
        path: the ``.zip`` saved by ``model.save``.
        action_low, action_high: action bounds (act_dim,) of the env it acts in.
    """

    def __init__(self, path: str | os.PathLike[str], action_low: np.ndarray, action_high: np.ndarray) -> None:
        self.path = Path(path)
        src = str(self.path)
        try:
            zf = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as e:
            raise PolicyError(f"{src}: not a stable-baselines3 zip ({e})") from None
        with zf:
            names = set(zf.namelist())
            if "policy.pth" not in names:
                raise PolicyError(f"{src}: missing member 'policy.pth' (expected a stable-baselines3 model zip)")
            state = torch.load(io.BytesIO(zf.read("policy.pth")), map_location="cpu", weights_only=True)
            data: dict[str, Any] = json.loads(zf.read("data")) if "data" in names else {}
        self.algo = self._algo(data)
        kwargs = data.get("policy_kwargs") or {}
        if isinstance(kwargs, dict):
            unsupported = sorted(set(kwargs) - {"use_sde", "net_arch", "log_std_init", ":type:", ":serialized:"})
            if kwargs.get("use_sde") or unsupported:
                raise PolicyError(
                    f"{src}: policy_kwargs {sorted(kwargs)} not supported (default ReLU MLP without gSDE expected)"
                )
        layer_idx = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"actor\.latent_pi\.(\d+)\.weight", k))})
        if not layer_idx or "actor.mu.weight" not in state:
            raise PolicyError(f"{src}: key 'policy.pth/actor.mu.weight' or 'actor.latent_pi.*': missing (SAC/TQC actor expected)")
        self.layers = [(state[f"actor.latent_pi.{i}.weight"].float(), state[f"actor.latent_pi.{i}.bias"].float())
                       for i in layer_idx]
        self.mu = (state["actor.mu.weight"].float(), state["actor.mu.bias"].float())
        self.obs_dim = int(self.layers[0][0].shape[1])
        self.act_dim = int(self.mu[0].shape[0])
        low = np.asarray(action_low, dtype=np.float64)
        high = np.asarray(action_high, dtype=np.float64)
        if low.shape != (self.act_dim,) or high.shape != (self.act_dim,):
            raise PolicyError(f"{src}: actor has {self.act_dim} action dims, env action bounds have shape {low.shape}")
        self.low, self.high = low, high

    @staticmethod
    def _algo(data: dict[str, Any]) -> str:
        mod = str((data.get("policy_class") or {}).get("__module__", "")) if isinstance(data.get("policy_class"), dict) else ""
        for algo in ("tqc", "sac"):
            if f".{algo}." in mod:
                return algo
        return "unknown"

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action(s): obs (obs_dim,) or (B, obs_dim) -> action (act_dim,) or (B, act_dim), float32."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.shape[1] != self.obs_dim:
            raise PolicyError(f"{self.path}: actor expects obs_dim {self.obs_dim}, got observations of shape {tuple(x.shape)}")
        for w, b in self.layers:
            x = torch.relu(torch.nn.functional.linear(x, w, b))
        a = torch.tanh(torch.nn.functional.linear(x, *self.mu)).numpy().astype(np.float64)
        act = (self.low + 0.5 * (a + 1.0) * (self.high - self.low)).astype(np.float32)
        return act[0] if single else act
