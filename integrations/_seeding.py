"""Seeding shared by the adapters."""

from __future__ import annotations

import numpy as np


def peek_np_seed() -> int:
    """A seed drawn from the global ``np.random`` state, which is restored afterwards.

    Why: d3rlpy (``d3rlpy.seed``) and SB3 (the model's ``seed``) seed ``np.random`` before the buffer
    is built, and their own buffers sample from it. A CFDG seed peeked from it follows the host's
    seed, and leaves the parent's sample stream exactly as it would be without us."""
    st = np.random.get_state()
    try:
        return int(np.random.randint(0, 2**31 - 1))
    finally:
        np.random.set_state(st)
