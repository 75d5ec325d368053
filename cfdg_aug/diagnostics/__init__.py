"""Diagnostics of generated transitions: two-sample statistics, physics error, plots, fidelity
reports, guidance sweeps and the ``guidance="auto"`` rule (see docs/fidelity.md).

Core-only imports (torch, numpy): MuJoCo / Gymnasium are imported when a physics check runs,
matplotlib when a plot is drawn.
"""

from __future__ import annotations

from cfdg_aug.diagnostics.fidelity import (
    DEFAULT_TOL,
    auto_guidance_for_buffer,
    choose_guidance,
    compare,
    fidelity_hook,
    fidelity_report,
    guidance_sweep,
    mean_report,
    refresh_fidelity,
    split_heldout,
    sweep_table,
)
from cfdg_aug.diagnostics.physics import noise_floor, physics_available, physics_error
from cfdg_aug.diagnostics.plots import plot_marginals, plot_projection, plot_sweep
from cfdg_aug.diagnostics.stats import (
    classifier_auc,
    dimension_names,
    mmd2,
    per_dimension_summary,
    roc_auc,
    wasserstein1,
)

__all__ = [
    "DEFAULT_TOL", "auto_guidance_for_buffer", "choose_guidance", "classifier_auc", "compare", "dimension_names",
    "fidelity_hook", "fidelity_report", "guidance_sweep", "mean_report", "mmd2", "noise_floor", "per_dimension_summary",
    "physics_available", "physics_error", "plot_marginals", "plot_projection", "plot_sweep", "refresh_fidelity",
    "roc_auc", "split_heldout", "sweep_table", "wasserstein1",
]
