"""Plots of real vs generated transitions (matplotlib, Agg backend, PNG written atomically).

- :func:`plot_marginals`: one histogram panel per column, every group overlaid.
- :func:`plot_projection`: a 2-D PCA projection (axes fitted on the first group, the real data
  by convention), one colour per group (e.g. real offline / real online / generated offline /
  generated online).

``groups`` is an ordered mapping ``label -> (N_i, D) array`` (flat transitions).
matplotlib is imported lazily, so the rest of the package works without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfdg_aug._optional import require


def _figure_module() -> Any:
    matplotlib = require("matplotlib", "experiments", what="plotting diagnostics")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _check_groups(groups: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not groups:
        raise ValueError("groups must hold at least one labelled (N, D) array")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    dims = {v.shape[1] if v.ndim == 2 else -1 for v in out.values()}
    if len(dims) != 1 or -1 in dims:
        shapes = {k: v.shape for k, v in out.items()}
        raise ValueError(f"every group must be an (N, D) array with the same D, got {shapes}")
    return out


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    from cfdg_aug._io import atomic_save_figure

    return atomic_save_figure(fig, path, dpi=90)


def plot_marginals(
    groups: Mapping[str, Any], path: str | os.PathLike[str], names: Sequence[str] | None = None, *,
    bins: int = 40, max_dims: int | None = None,
) -> Path:
    """Per-column histograms (density) of every group, overlaid; returns the PNG path."""
    g = _check_groups(groups)
    d = next(iter(g.values())).shape[1]
    names = list(names) if names is not None else [f"dim_{i}" for i in range(d)]
    if len(names) != d:
        raise ValueError(f"names has {len(names)} entries, data has {d} columns")
    d_plot = d if max_dims is None else min(d, max_dims)
    cols = min(6, d_plot)
    rows = math.ceil(d_plot / cols)
    plt = _figure_module()
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= d_plot:
            ax.axis("off")
            continue
        pooled = np.concatenate([v[:, j] for v in g.values()])
        lo, hi = np.quantile(pooled, [0.005, 0.995])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for label, v in g.items():
            ax.hist(np.clip(v[:, j], edges[0], edges[-1]), bins=edges, density=True, histtype="step", label=label)
        ax.set_title(names[j], fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def pca_projection(fit_on: np.ndarray, *others: np.ndarray, k: int = 2) -> list[np.ndarray]:
    """Project ``fit_on`` and ``others`` (N_i, D) on the first ``k`` principal axes of ``fit_on``
    (standardised by ``fit_on``'s columns); returns (N_i, k) arrays in the same order."""
    mu, sd = fit_on.mean(axis=0), fit_on.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = (fit_on - mu) / sd
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    axes = vt[:k].T
    return [((a - mu) / sd) @ axes for a in (fit_on, *others)]


def plot_projection(
    groups: Mapping[str, Any], path: str | os.PathLike[str], *, max_points: int = 3000, seed: int = 0,
) -> Path:
    """2-D PCA scatter of every group (axes fitted on the first group); returns the PNG path."""
    g = _check_groups(groups)
    rng = np.random.default_rng(seed)
    sub = {k: (v[rng.choice(v.shape[0], max_points, replace=False)] if v.shape[0] > max_points else v)
           for k, v in g.items()}
    vals = list(sub.values())
    proj = pca_projection(vals[0], *vals[1:])
    plt = _figure_module()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for (label, _), p in zip(sub.items(), proj, strict=True):
        ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.35, label=label)
    ax.set_xlabel("PC 1 (of the first group)")
    ax.set_ylabel("PC 2")
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """AUC and MMD^2 against the guidance weight, one line per label, from
    :func:`cfdg_aug.diagnostics.guidance_sweep` reports; returns the PNG path."""
    if not reports:
        raise ValueError("plot_sweep needs at least one report")
    plt = _figure_module()
    fig, (ax_auc, ax_mmd) = plt.subplots(1, 2, figsize=(9, 3.5))
    for lab in ("online", "offline"):
        pts = [(r["guidance"], r[lab]["auc"], r[lab]["mmd2"]) for r in reports if r.get(lab) is not None]
        if not pts:
            continue
        w, auc, mmd = zip(*sorted(pts), strict=True)
        ax_auc.plot(w, auc, marker="o", label=f"{lab}-labelled vs real {lab}")
        ax_mmd.plot(w, mmd, marker="o", label=f"{lab}-labelled vs real {lab}")
    ax_auc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_auc.set_xlabel("guidance w")
    ax_auc.set_ylabel("two-sample classifier AUC")
    ax_mmd.set_xlabel("guidance w")
    ax_mmd.set_ylabel("MMD²")
    ax_auc.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
