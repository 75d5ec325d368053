"""d3rlpy integration: :class:`CFDGReplayBuffer`, a drop-in ``d3rlpy.dataset.ReplayBuffer`` with CFDG,
and PEX / APL as d3rlpy algorithms (importing this package registers them with d3rlpy).

Requires the ``d3rlpy`` extra (``pip install cfdg-aug[d3rlpy]``).
"""

from ._convert import (
    episodes_to_transition_batch,
    to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)
from .apl import APL, APL_CFDG_REFRESH_EVERY, BRANCH_CONSERVATIVE, BRANCH_GREEDY, APLConfig
from .buffer import CFDGReplayBuffer, create_fifo_cfdg_replay_buffer, create_infinite_cfdg_replay_buffer
from .pex import PEX, PEXConfig

__all__ = [
    "APL",
    "APLConfig",
    "APL_CFDG_REFRESH_EVERY",
    "BRANCH_CONSERVATIVE",
    "BRANCH_GREEDY",
    "PEX",
    "PEXConfig",
    "CFDGReplayBuffer",
    "create_fifo_cfdg_replay_buffer",
    "create_infinite_cfdg_replay_buffer",
    "episodes_to_transition_batch",
    "to_transition_batch",
    "transition_batch_to_episodes",
    "transition_batch_to_minibatch",
]
