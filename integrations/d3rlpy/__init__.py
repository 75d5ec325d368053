"""d3rlpy integration: :class:`CFDGReplayBuffer`, a drop-in ``d3rlpy.dataset.ReplayBuffer`` with CFDG,
and PEX / APL as d3rlpy algorithms (importing this package registers them with d3rlpy).

Requires the ``d3rlpy`` extra (``pip install "cfdg-aug[d3rlpy]"``); without it, importing this package
raises one ``ImportError`` naming that extra.
"""

from cfdg_aug._optional import require

# Checked before the submodules, which import d3rlpy at their top.
require("d3rlpy", "d3rlpy", what="cfdg_aug.integrations.d3rlpy")

from ._convert import (  # noqa: E402
    episodes_to_transition_batch,
    to_transition_batch,
    transition_batch_to_episodes,
    transition_batch_to_minibatch,
)
from .actor_rows import real_rows_of, restrict_actor_to_leading_rows  # noqa: E402
from .apl import APL, APL_CFDG_REFRESH_EVERY, BRANCH_CONSERVATIVE, BRANCH_GREEDY, APLConfig  # noqa: E402
from .buffer import CFDGReplayBuffer, create_fifo_cfdg_replay_buffer, create_infinite_cfdg_replay_buffer  # noqa: E402
from .pex import PEX, PEXConfig  # noqa: E402
from .probe import PROBE_STATS, critic_probe  # noqa: E402

__all__ = [
    "APL",
    "APLConfig",
    "APL_CFDG_REFRESH_EVERY",
    "BRANCH_CONSERVATIVE",
    "BRANCH_GREEDY",
    "PEX",
    "PEXConfig",
    "PROBE_STATS",
    "CFDGReplayBuffer",
    "create_fifo_cfdg_replay_buffer",
    "create_infinite_cfdg_replay_buffer",
    "critic_probe",
    "episodes_to_transition_batch",
    "to_transition_batch",
    "transition_batch_to_episodes",
    "transition_batch_to_minibatch",
    "real_rows_of",
    "restrict_actor_to_leading_rows",
]
