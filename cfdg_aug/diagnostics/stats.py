"""Two-sample statistics between real and generated transitions (torch + numpy only).

- :func:`classifier_auc`: a small MLP is trained to tell real from generated rows on one split
  and scored (ROC AUC) on a held-out split. 0.5 = indistinguishable, 1.0 = perfectly separable.
- :func:`mmd2`: unbiased squared maximum mean discrepancy with a Gaussian (RBF) kernel
  ``k(a, b) = exp(-||a - b||^2 / (2 * bandwidth^2))``; the bandwidth is the median pairwise
  Euclidean distance of the pooled sample (median heuristic) unless given.
- :func:`per_dimension_summary`: mean / std per column and the 1-D Wasserstein-1 distance.

All three first standardise every column with the REAL sample's mean and std, so dimensions with
large units (velocities) do not swamp small ones (the done flag). Every function is deterministic
given ``seed`` and leaves the global torch / numpy RNGs untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cfdg_aug._fit import cpu_seeded


def dimension_names(obs_dim: int, act_dim: int) -> list[str]:
    """Column names of a flat transition ``[obs, act, rew, next_obs, done]`` (length ``2*obs_dim+act_dim+2``)."""
    return ([f"obs_{i}" for i in range(obs_dim)] + [f"act_{i}" for i in range(act_dim)] + ["rew"]
            + [f"next_obs_{i}" for i in range(obs_dim)] + ["done"])


def _as_matrix(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
        raise ValueError(f"{name} holds a non-finite value (first in row {bad})")
    return a


def _pair(real: Any, generated: Any) -> tuple[np.ndarray, np.ndarray]:
    r, g = _as_matrix("real", real), _as_matrix("generated", generated)
    if r.shape[1] != g.shape[1]:
        raise ValueError(f"real and generated must have the same number of columns, got {r.shape[1]} and {g.shape[1]}")
    return r, g


def standardize(real: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Standardise ``real`` and ``others`` with the real columns' mean and std.

    Columns that are constant in the real data (std 0, e.g. a done flag that never fires) are
    only centred (divided by 1), so a generated value off that constant still shows up.
    """
    mu = real.mean(axis=0)
    sd = real.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return [(a - mu) / sd for a in (real, *others)]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` (N,) for binary ``labels`` (N,) in {0, 1} (Mann-Whitney U, ties averaged)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both classes among the labels")
    # Average 1-based ranks over ties.
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_auc(
    real: Any, generated: Any, *, seed: int = 0, test_fraction: float = 0.3, hidden: int = 32,
    steps: int = 200, lr: float = 1e-2, weight_decay: float = 1e-3, max_n: int | None = 5000,
    eval_every: int = 10,
) -> dict[str, float]:
    """Two-sample classifier test: ROC AUC of an MLP telling generated (1) from real (0) rows.

    Args:
        real: (N_r, D) real rows; generated: (N_g, D) generated rows.
        seed: drives subsampling, the splits and the initialisation; nothing global is touched.
        test_fraction: share of each class held out for scoring (never seen in training).
        hidden, steps, lr, weight_decay: the MLP (D -> hidden -> hidden -> 1, SiLU), trained
            full-batch with Adam on the binary cross-entropy for at most ``steps`` steps.
            A fifth of the training rows is a validation split: the weights with the lowest
            validation loss (checked every ``eval_every`` steps) are scored, because an
            overfitted classifier loses power on the test split.
        max_n: rows per class used at most (the larger sample is subsampled anyway, so classes
            are balanced and 0.5 means chance).

    Returns:
        ``{"auc", "n_train", "n_test"}`` (rows per class). The AUC is measured on the held-out
        split: ~0.5 when both samples come from one distribution (standard error roughly
        ``0.3 / sqrt(n_test)``), towards 1 as they separate (below 0.5 only by chance).
    """
    r, g = _pair(real, generated)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    n = min(r.shape[0], g.shape[0], max_n if max_n is not None else 1 << 62)
    n_test = int(round(n * test_fraction))
    n_val = max(1, (n - n_test) // 5)
    if n_test < 2 or n - n_test - n_val < 2:
        raise ValueError(
            f"classifier_auc needs at least ~10 rows per sample, got {r.shape[0]} real and {g.shape[0]} generated"
        )
    r = r[rng.permutation(r.shape[0])[:n]]
    g = g[rng.permutation(g.shape[0])[:n]]
    te, va = slice(0, n_test), slice(n_test, n_test + n_val)
    tr = slice(n_test + n_val, n)
    # Standardise with the real TRAIN rows only, so nothing about the test split leaks in.
    mu, sd = r[tr].mean(axis=0), r[tr].std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)

    def xy(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x = (np.concatenate([r[part], g[part]]) - mu) / sd
        k = r[part].shape[0]
        return torch.from_numpy(x).float(), torch.cat([torch.zeros(k), torch.ones(k)])

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = xy(tr), xy(va), xy(te)
    with cpu_seeded(seed):
        net = torch.nn.Sequential(
            torch.nn.Linear(x_tr.shape[1], hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1),
        )
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best = (float("inf"), [p.detach().clone() for p in net.parameters()])
    with torch.enable_grad():
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    v = float(loss_fn(net(x_va).squeeze(1), y_va))
                if v < best[0]:
                    best = (v, [p.detach().clone() for p in net.parameters()])
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x_tr).squeeze(1), y_tr)
            loss.backward()
            opt.step()
    with torch.no_grad():
        for p, b in zip(net.parameters(), best[1], strict=True):
            p.copy_(b)
        scores = net(x_te).squeeze(1).double().numpy()
    return {"auc": roc_auc(scores, y_te.numpy()), "n_train": float(tr.stop - tr.start), "n_test": float(n_test)}


def median_bandwidth(x: np.ndarray, *, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the rows of ``x`` (at most ``max_points`` rows used)."""
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], max_points, replace=False)]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    d = torch.cdist(t, t)
    iu = torch.triu_indices(d.shape[0], d.shape[0], offset=1)
    med = float(d[iu[0], iu[1]].median()) if iu.shape[1] else 0.0
    return med if med > 0 else 1.0


def mmd2(
    real: Any, generated: Any, *, bandwidth: float | None = None, seed: int = 0, max_n: int | None = 2000,
    standardise: bool = True, scales: Sequence[float] = (0.25, 0.5, 1.0),
) -> dict[str, float]:
    """Unbiased MMD^2 between ``real`` (N_r, D) and ``generated`` (N_g, D), Gaussian kernels.

    ``k(a, b) = mean_s exp(-||a - b||^2 / (2 (s h)^2))`` over ``s`` in ``scales`` (default
    0.25, 0.5, 1), with ``h = bandwidth`` or, by default, the median pairwise distance of the
    pooled (standardised) sample (median heuristic). The smaller scales are there because the
    median distance alone is too wide in ~20-40 dimensions to see a change confined to a few
    dimensions (measured: next-state noise of 0.3 std went unseen at scale 1 alone). Columns are standardised with the real
    sample's mean / std first (``standardise``). At most ``max_n`` rows per sample are used
    (random subset), since the cost is quadratic.

    Returns ``{"mmd2", "bandwidth", "n_real", "n_generated"}``; ``mmd2`` ~ 0 (can be slightly
    negative) when both come from one distribution.
    """
    r, g = _pair(real, generated)
    rng = np.random.default_rng(seed)
    if max_n is not None:
        if r.shape[0] > max_n:
            r = r[rng.choice(r.shape[0], max_n, replace=False)]
        if g.shape[0] > max_n:
            g = g[rng.choice(g.shape[0], max_n, replace=False)]
    if r.shape[0] < 2 or g.shape[0] < 2:
        raise ValueError("mmd2 needs at least 2 rows in each sample")
    if standardise:
        r, g = standardize(r, g)
    h = float(bandwidth) if bandwidth is not None else median_bandwidth(np.concatenate([r, g]), seed=seed)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    tr, tg = torch.from_numpy(r), torch.from_numpy(g)
    if not scales or any(not (float(c) > 0) for c in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    gammas = [1.0 / (2.0 * (float(c) * h) ** 2) for c in scales]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-g * d2) for g in gammas) / len(gammas)  # type: ignore[return-value]

    m, n = tr.shape[0], tg.shape[0]
    kxx = (k(tr, tr).sum() - m) / (m * (m - 1))  # diagonal terms are exactly 1
    kyy = (k(tg, tg).sum() - n) / (n * (n - 1))
    kxy = k(tr, tg).mean()
    return {"mmd2": float(kxx + kyy - 2 * kxy), "bandwidth": h, "n_real": float(m), "n_generated": float(n)}


def wasserstein1(a: np.ndarray, b: np.ndarray, *, grid: int = 512) -> float:
    """1-D Wasserstein-1 distance between the empirical distributions of ``a`` and ``b``
    (integral of |F_a^-1 - F_b^-1| over ``grid`` quantile levels)."""
    q = (np.arange(grid) + 0.5) / grid
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def per_dimension_summary(
    real: Any, generated: Any, names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-column comparison of ``real`` (N_r, D) and ``generated`` (N_g, D).

    Returns ``{"dims": [ {name, real_mean, real_std, gen_mean, gen_std, mean_shift, std_ratio,
    w1}, ...], "w1_mean", "w1_max", "worst_dim", "mean_shift_max"}`` where ``mean_shift`` is
    ``(gen_mean - real_mean) / real_std`` and ``w1`` the Wasserstein-1 distance on the columns
    standardised by the real sample (so 1.0 = one real standard deviation).
    """
    r, g = _pair(real, generated)
    names = list(names) if names is not None else [f"dim_{i}" for i in range(r.shape[1])]
    if len(names) != r.shape[1]:
        raise ValueError(f"names has {len(names)} entries, data has {r.shape[1]} columns")
    rs, gs = standardize(r, g)
    dims: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        sd = float(r[:, j].std())
        dims.append({
            "name": name, "real_mean": float(r[:, j].mean()), "real_std": sd, "gen_mean": float(g[:, j].mean()),
            "gen_std": float(g[:, j].std()), "mean_shift": float(gs[:, j].mean() - rs[:, j].mean()),
            "std_ratio": float(g[:, j].std() / sd) if sd > 1e-12 else float("nan"),
            "w1": wasserstein1(rs[:, j], gs[:, j]),
        })
    w1 = np.array([d["w1"] for d in dims])
    return {
        "dims": dims, "w1_mean": float(w1.mean()), "w1_max": float(w1.max()), "worst_dim": dims[int(w1.argmax())]["name"],
        "mean_shift_max": float(max(abs(d["mean_shift"]) for d in dims)),
    }
