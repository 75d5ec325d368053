"""d3rlpy integration: :class:`CFDGReplayBuffer`, a drop-in ``d3rlpy.dataset.ReplayBuffer`` with CFDG.

Requires the ``d3rlpy`` extra (``pip install cfdg-aug[d3rlpy]``).
"""

from ._convert import (
    episodes_to_transition_batch,
    to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)
from .buffer import CFDGReplayBuffer, create_fifo_cfdg_replay_buffer, create_infinite_cfdg_replay_buffer

__all__ = [
    "CFDGReplayBuffer",
    "create_fifo_cfdg_replay_buffer",
    "create_infinite_cfdg_replay_buffer",
    "episodes_to_transition_batch",
    "to_transition_batch",
    "transition_batch_to_episodes",
    "transition_batch_to_minibatch",
]
