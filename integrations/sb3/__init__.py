"""stable-baselines3 integration: CFDG as a drop-in replay buffer for SB3's off-policy algorithms
(SAC, TD3, DDPG, DQN; sb3-contrib's TQC, CrossQ, QR-DQN).

- :class:`CFDGReplayBuffer`: ``replay_buffer_class=CFDGReplayBuffer`` (CFDG options through
  ``replay_buffer_kwargs``); owns the refresh schedule. :class:`CFDGDictReplayBuffer` is the same
  for ``Dict`` observation spaces (``MultiInputPolicy``, goal-conditioned tasks).
- :class:`CFDGCallback`: logs refreshes and pool sizes to the SB3 logger, saves the generator
  next to the model's checkpoints.
- :func:`prefill_offline` / :func:`pretrain_offline`: fill the offline pool from a dataset and
  optionally pre-train the agent on it before ``learn``.

Requires the ``sb3`` extra (``pip install "cfdg-aug[sb3]"``); without it, importing this package raises
one ``ImportError`` naming that extra. See docs/sb3.md.
"""

from cfdg_aug._optional import require

# Checked before the submodules, which import stable-baselines3 at their top.
require("stable_baselines3", "sb3", what="cfdg_aug.integrations.sb3")

from cfdg_aug.integrations.sb3.buffer import (  # noqa: E402
    CFDGBufferError,
    CFDGBufferMixin,
    CFDGDictReplayBuffer,
    CFDGReplayBuffer,
    scale_actions_to_unit,
)
from cfdg_aug.integrations.sb3.callback import CFDGCallback, VerboseRefreshProgress  # noqa: E402
from cfdg_aug.integrations.sb3.prefill import PretrainStats, prefill_offline, pretrain_offline  # noqa: E402

__all__ = [
    "CFDGBufferError", "CFDGBufferMixin", "CFDGCallback", "CFDGDictReplayBuffer", "CFDGReplayBuffer", "PretrainStats", "prefill_offline", "pretrain_offline",
    "scale_actions_to_unit", "VerboseRefreshProgress",
]
