"""Learning-curve plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cfdg_aug._io import atomic_save_figure


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    out_path: str | os.PathLike[str],
    *,
    title: str = "",
    xlabel: str = "online environment steps",
    ylabel: str = "D4RL normalised score",
) -> Path:
    """One line per curve (label -> [(step, score), ...]); written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves must hold at least one (label -> points) entry")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, pts in curves.items():
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_save_figure(fig, out_path)


__all__ = ["plot_learning_curves"]
