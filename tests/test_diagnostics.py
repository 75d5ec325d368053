"""Diagnostics core: two-sample statistics, the guidance rule, reports and the refresh hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug import CFDGConfig, CFDGGenerator
from cfdg_aug.diagnostics import (
    auto_guidance_for_buffer,
    choose_guidance,
    classifier_auc,
    fidelity_report,
    guidance_sweep,
    mean_report,
    mmd2,
    per_dimension_summary,
    plot_sweep,
    refresh_fidelity,
    roc_auc,
    split_heldout,
    sweep_table,
)
from cfdg_aug.transitions import TransitionBatch, TransitionLayout

TINY = CFDGConfig.small(width=32, depth=1, train_steps=30, warm_start_steps=10, num_sample_steps=4, redraw_steps=4, redraw_resample=2,
                        synthetic_online_size=64, synthetic_offline_size=16, refresh_every=50, min_online=50,
                        guidance_candidates=(0.0, 2.0))


# --- statistics on Gaussians with a known shift ---------------------------------------------------
def test_roc_auc_matches_hand_computed_values_including_ties() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    # pos {0.5, 0.7}, neg {0.5, 0.1}: pairs (0.5 vs 0.5)=0.5, (0.5 vs 0.1)=1, (0.7 vs *)=1,1 -> 3.5/4
    assert roc_auc(np.array([0.5, 0.7, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.ones(3))


def test_classifier_auc_is_chance_on_one_distribution_and_high_on_a_shift(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(1200, 5)), rng.normal(size=(1200, 5))
    same = classifier_auc(x, y, seed=0)["auc"]
    shifted = classifier_auc(x, y + np.array([1.0, 1.0, 0, 0, 0]), seed=0)["auc"]
    assert abs(same - 0.5) < 0.06
    # Bayes AUC for a shift of sqrt(2) std along one direction: Phi(sqrt(2)/sqrt(2)) = 0.84.
    assert shifted > 0.75


def test_classifier_auc_sees_a_dependence_that_the_marginals_hide(rng: np.random.Generator) -> None:
    x = rng.normal(size=(1500, 2))
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]           # strongly correlated columns
    y = x.copy()
    y[:, 1] = rng.permutation(y[:, 1])          # same marginals, correlation destroyed
    assert classifier_auc(x, y, seed=1)["auc"] > 0.8


def test_mmd2_is_near_zero_on_one_distribution_and_grows_with_the_shift(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(800, 5)), rng.normal(size=(800, 5))
    vals = [mmd2(x, y + s)["mmd2"] for s in (0.0, 0.25, 0.5, 1.0)]
    assert abs(vals[0]) < 2e-3
    assert vals[0] < vals[1] < vals[2] < vals[3]
    assert vals[1] > 5e-3
    assert mmd2(x, y)["bandwidth"] == pytest.approx(np.sqrt(2 * 5), rel=0.15)  # median distance of N(0, I_5)


def test_per_dimension_summary_locates_the_shifted_column(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    y[:, 2] += 1.5
    s = per_dimension_summary(x, y, ["a", "b", "c", "d"])
    assert s["worst_dim"] == "c"
    assert s["dims"][2]["w1"] == pytest.approx(1.5, abs=0.1)
    assert s["dims"][2]["mean_shift"] == pytest.approx(1.5, abs=0.1)
    assert s["dims"][0]["w1"] < 0.1


def test_statistics_reject_bad_input_naming_the_argument(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="same number of columns"):
        classifier_auc(rng.normal(size=(50, 3)), rng.normal(size=(50, 4)))
    bad = rng.normal(size=(50, 3))
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="generated holds a non-finite value .*row 7"):
        mmd2(rng.normal(size=(50, 3)), bad)
    with pytest.raises(ValueError, match="real must be a non-empty"):
        per_dimension_summary(np.zeros(5), np.zeros((5, 1)))


# --- the guidance rule on generators whose best w is known ------------------------------------------
LAYOUT = TransitionLayout(2, 1)  # flat dim 7


class ShiftGenerator:
    """A stand-in generator (duck-typed): offline data ~ N(0, I), online data ~ N(1, I) in every
    column but done; online-labelled samples at guidance w have mean t(w) = (1 + w) / (1 + best_w),
    i.e. too close to the offline data below ``best_w`` and overshooting above it."""

    conditional = True
    is_fitted = True

    def __init__(self, best_w: float, ignore_w: bool = False) -> None:
        self.best_w, self.ignore_w = best_w, ignore_w

    def sample(self, n: int, label: str, *, guidance: float | None = None) -> TransitionBatch:
        rng = np.random.default_rng(12345)  # same noise for every w, like the real generator under a seed
        t = 1.0 if self.ignore_w else (1.0 + float(guidance or 0.0)) / (1.0 + self.best_w)
        return _gauss(rng, n, t if label == "online" else 0.0)


def _gauss(rng: np.random.Generator, n: int, mean: float) -> TransitionBatch:
    x = rng.normal(size=(n, LAYOUT.dim)) + mean
    x[:, LAYOUT.done] = 0.0
    return LAYOUT.unflatten(x.astype(np.float32))


@pytest.mark.parametrize("criterion", ["auc", "mmd"])
def test_choose_guidance_picks_the_weight_that_matches_the_heldout_online_data(criterion: str) -> None:
    rng = np.random.default_rng(3)
    online_heldout, offline_heldout = _gauss(rng, 400, 1.0), _gauss(rng, 400, 0.0)
    cands = [0.0, 1.0, 2.0, 4.0]
    w_biased, rows = choose_guidance(ShiftGenerator(best_w=2.0), offline_heldout, online_heldout, cands,
                                     n=400, criterion=criterion)  # type: ignore[arg-type]
    w_right, _ = choose_guidance(ShiftGenerator(best_w=0.0), offline_heldout, online_heldout, cands,
                                 n=400, criterion=criterion)  # type: ignore[arg-type]
    assert w_biased == 2.0
    assert w_right == 0.0
    assert [r["guidance"] for r in rows] == cands
    assert sum(r["chosen"] for r in rows) == 1.0
    scores = [r["score"] for r in rows]
    assert scores[0] > scores[2] and scores[3] > scores[2]


def test_choose_guidance_breaks_ties_toward_the_smallest_weight() -> None:
    rng = np.random.default_rng(4)
    online_heldout = _gauss(rng, 300, 1.0)
    # w has no effect -> every score is equal -> the smallest candidate, whatever the order given
    w, rows = choose_guidance(ShiftGenerator(0.0, ignore_w=True), None, online_heldout, [4.0, 0.5, 1.0],
                              n=300)  # type: ignore[arg-type]
    assert w == 0.5
    assert len({r["score"] for r in rows}) == 1


def test_choose_guidance_rejects_unusable_input() -> None:
    rng = np.random.default_rng(5)
    held = _gauss(rng, 100, 1.0)
    gen = ShiftGenerator(1.0)
    with pytest.raises(ValueError, match="criterion"):
        choose_guidance(gen, None, held, [0.0], criterion="kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        choose_guidance(gen, None, held, [0.0, -1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offline_heldout is empty"):
        choose_guidance(gen, None, held, [0.0], offline_weight=0.5)  # type: ignore[arg-type]


# --- with the real generator (tiny budget) --------------------------------------------------------
@pytest.fixture(scope="module")
def real_halves() -> tuple[TransitionBatch, TransitionBatch]:
    from cfdg_aug.datasets import load_embedded

    b = load_embedded().to_transition_batch()
    return b[:1500], b[20000:21500]


@pytest.fixture(scope="module")
def fitted(real_halves: tuple[TransitionBatch, TransitionBatch]) -> CFDGGenerator:
    gen = CFDGGenerator(11, 3, TINY, seed=0)
    gen.fit(*real_halves)
    return gen


def test_fidelity_report_is_reproducible_and_leaves_the_generator_stream_alone(
    fitted: CFDGGenerator, real_halves: tuple[TransitionBatch, TransitionBatch],
) -> None:
    off, on = real_halves
    state = fitted._rng.get_state().clone()
    r1 = fidelity_report(fitted, off, on, n=200, guidance=1.0, seed=7, per_dimension=False)
    assert torch_equal(fitted._rng.get_state(), state)
    r2 = fidelity_report(fitted, off, on, n=200, guidance=1.0, seed=7, per_dimension=False)
    assert r1["online"]["auc"] == r2["online"]["auc"] and r1["offline"]["mmd2"] == r2["offline"]["mmd2"]
    assert r1["guidance"] == 1.0 and r1["online"]["label"] == "online" and r1["offline"]["n_generated"] == 200
    # 30 training steps cannot fool a classifier: the report must say so.
    assert r1["online"]["auc"] > 0.7


def test_several_evaluations_are_averaged_with_their_spread(
    fitted: CFDGGenerator, real_halves: tuple[TransitionBatch, TransitionBatch],
) -> None:
    off, on = real_halves
    singles = [fidelity_report(fitted, off, on, n=200, seed=s, per_dimension=False) for s in (3, 4, 5)]
    mean = fidelity_report(fitted, off, on, n=200, seed=3, per_dimension=False, evals=3)
    aucs = [r["online"]["auc"] for r in singles]
    assert mean["evals"] == 3 and mean["seeds"] == [3, 4, 5] and mean["online"]["auc_evals"] == aucs
    assert mean["online"]["auc"] == pytest.approx(np.mean(aucs))
    assert mean["online"]["auc_sd"] == pytest.approx(np.std(aucs, ddof=1)) and mean["online"]["auc_sd"] > 0
    assert mean["offline"]["mmd2"] == pytest.approx(np.mean([r["offline"]["mmd2"] for r in singles]))
    assert mean["seed"] == 3 and mean["n"] == 200  # settings are not averaged
    assert "(sd " in sweep_table([mean]) and "(sd " not in sweep_table(singles)
    with pytest.raises(ValueError, match="evals must be an int >= 1"):
        fidelity_report(fitted, off, on, n=200, evals=0)


def test_mean_report_keeps_the_worst_share_of_actions_out_of_bounds() -> None:
    reports = [{"seed": s, "n": 10, "online": {"auc": a, "act_out_of_bounds": o, "physics": None}}
               for s, a, o in ((0, 0.5, 0.0), (1, 0.7, 0.2))]
    m = mean_report(reports)
    assert m["online"]["act_out_of_bounds"] == 0.2 and m["online"]["auc"] == pytest.approx(0.6)
    assert m["online"]["physics"] is None


def torch_equal(a: object, b: object) -> bool:
    import torch

    return bool(torch.equal(a, b))  # type: ignore[arg-type]


def test_fidelity_report_of_an_unconditional_generator_compares_its_one_sample_with_both(
    real_halves: tuple[TransitionBatch, TransitionBatch], tmp_path: object,
) -> None:
    off, on = real_halves
    gen = CFDGGenerator(11, 3, TINY.replace(augmentation="unconditional"), seed=1)
    gen.fit(off, on)
    rep = fidelity_report(gen, off, on, n=150, plot_dir=tmp_path, plot_max_dims=4)  # type: ignore[arg-type]
    assert rep["guidance"] is None and rep["online"]["label"] is None and rep["offline"]["label"] is None
    assert len(rep["online"]["dims"]) == 2 * 11 + 3 + 2
    for key in ("marginals", "projection"):
        with open(rep["plots"][key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_guidance_sweep_fits_once_and_reports_every_weight(
    real_halves: tuple[TransitionBatch, TransitionBatch], tmp_path: Path,
) -> None:
    off, on = real_halves
    gen = CFDGGenerator(11, 3, TINY, seed=2)
    reps = guidance_sweep(gen, off, on, [0.0, 3.0], n=150)
    assert gen.num_fits == 1
    assert [r["guidance"] for r in reps] == [0.0, 3.0]
    assert reps[0]["online"]["mmd2"] != reps[1]["online"]["mmd2"]  # w changes the samples
    table = sweep_table(reps).splitlines()
    assert len(table) == 2 + 2 * 2 and table[2].startswith("| 0 | online |") and table[4].startswith("| 3 | online |")
    png = plot_sweep(reps, tmp_path / "sweep.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="conditional"):
        guidance_sweep(CFDGGenerator(11, 3, TINY.replace(augmentation="unconditional")), off, on, [1.0])


def test_auto_guidance_for_buffer_returns_a_candidate_from_a_heldout_split(
    fitted: CFDGGenerator, real_halves: tuple[TransitionBatch, TransitionBatch],
) -> None:
    off, on = real_halves
    w, info = auto_guidance_for_buffer(fitted, off, on, TINY, np.random.default_rng(0), n=200)
    assert w in TINY.guidance_candidates
    assert info["n_heldout_online"] == 150 and info["heldout"] == "score_only"
    assert [r["guidance"] for r in info["rows"]] == list(TINY.guidance_candidates)
    with pytest.raises(ValueError, match="at least 10 held-out online"):
        auto_guidance_for_buffer(fitted, off, on[:20], TINY, np.random.default_rng(0))


def test_split_heldout_partitions_the_rows(real_halves: tuple[TransitionBatch, TransitionBatch]) -> None:
    _, on = real_halves
    train, held = split_heldout(on, 0.1, np.random.default_rng(0))
    assert len(train) == 1350 and len(held) == 150
    rows = {r.tobytes() for r in on.flatten()}
    assert {r.tobytes() for r in np.concatenate([train.flatten(), held.flatten()])} == rows
    with pytest.raises(ValueError, match="fraction"):
        split_heldout(on, 1.5, np.random.default_rng(0))


def test_refresh_fidelity_flags_synthetic_pools_that_differ_from_the_real_ones(
    real_halves: tuple[TransitionBatch, TransitionBatch],
) -> None:
    rng = np.random.default_rng(0)
    # Random halves of the same rows: one distribution (consecutive blocks are different episodes).
    off, on = (b[rng.permutation(len(b))] for b in real_halves)
    good = refresh_fidelity(off[:700], on[:700], off[700:1400], on[700:1400], n=700)
    shuffled = TransitionBatch(on.obs[700:1400], on.act[700:1400], on.rew[700:1400],
                               on.next_obs[700:1400][rng.permutation(700)], on.done[700:1400])
    bad = refresh_fidelity(off[:700], on[:700], None, shuffled, n=700)
    assert set(good) == {"fidelity/online_auc", "fidelity/online_mmd2", "fidelity/offline_auc", "fidelity/offline_mmd2"}
    assert good["fidelity/online_auc"] < 0.6 and good["fidelity/offline_auc"] < 0.6
    assert set(bad) == {"fidelity/online_auc", "fidelity/online_mmd2"}
    assert bad["fidelity/online_auc"] > 0.8
    assert bad["fidelity/online_mmd2"] > good["fidelity/online_mmd2"] + 2e-3


def test_fidelity_hook_logs_at_every_buffer_refresh(real_halves: tuple[TransitionBatch, TransitionBatch]) -> None:
    from cfdg_aug import AugmentedReplayBuffer
    from cfdg_aug.diagnostics import fidelity_hook

    off, on = real_halves
    buf = AugmentedReplayBuffer(11, 3, config=TINY, seed=0)
    logged: list[dict[str, float]] = []
    buf.add_hook(fidelity_hook(buf, logged.append, n=200))
    buf.add_offline(off[:300])
    buf.add(on[:60])
    buf.refresh()
    assert len(logged) == 1 and logged[0]["refresh_index"] == 1.0
    # The hook scores the pools the refresh just generated (seed = its seed + refresh index).
    direct = refresh_fidelity(buf.offline_data(), buf.online_data(), buf.pool_data("synthetic_offline"),
                              buf.pool_data("synthetic_online"), n=200, seed=1)
    assert {k: v for k, v in logged[0].items() if k != "refresh_index"} == direct


def test_importing_diagnostics_loads_neither_mujoco_nor_matplotlib_nor_rl_libraries() -> None:
    code = ("import sys, cfdg_aug.diagnostics; "
            "print(sorted(m for m in ('mujoco', 'gymnasium', 'matplotlib', 'd3rlpy', 'stable_baselines3') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
