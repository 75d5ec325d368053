"""cfdg_aug: classifier-free diffusion generation (CFDG) augmentation for offline-to-online RL.

Core (torch, numpy, einops, safetensors): :class:`CFDGConfig`, :class:`TransitionBatch`,
:class:`CFDGGenerator`, :class:`AugmentedReplayBuffer`. Host-library adapters live in
``cfdg_aug.integrations.d3rlpy`` and ``cfdg_aug.integrations.sb3`` (extras ``[d3rlpy]``, ``[sb3]``).
"""

from cfdg_aug.config import CFDGConfig, ConfigError
from cfdg_aug.generator import CFDGGenerator, CheckpointError, FitStats
from cfdg_aug.normalizer import Normalizer
from cfdg_aug.transitions import TransitionBatch, TransitionError, TransitionLayout

__version__ = "0.1.0"

__all__ = [
    "AugmentedReplayBuffer", "CFDGConfig", "CFDGGenerator", "CheckpointError", "ConfigError", "FitStats",
    "Normalizer", "RefreshStats", "TransitionBatch", "TransitionError", "TransitionLayout", "__version__",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy so the buffer module can import the generator
    if name in ("AugmentedReplayBuffer", "RefreshStats"):
        from cfdg_aug import buffer

        return getattr(buffer, name)
    raise AttributeError(f"module 'cfdg_aug' has no attribute {name!r}")
