"""`cfdg-aug report`: the aggregates equal what is computed by hand from known CSVs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cfdg_aug.experiments.report import (
    ReportError,
    make_report,
    paired_difference_ci,
    rank_correlation,
    sign_test,
    stratified_bootstrap_ci,
)
from cfdg_aug.experiments.runner import resolve_config, write_json, write_metrics


def _fake_run(root: Path, aug: str, task: str, seed: int, curve: list[tuple[int, float]],
              refreshes: list[dict[str, float]] | None = None) -> None:
    """A finished run folder; ``refreshes``: refresh rows (``online_step`` plus fidelity columns),
    by default one without fidelity columns at online step 5."""
    cfg = resolve_config("iql", aug, f"/data/{task}.hdf5", "small", seed)
    rd = root / cfg.run_id()
    rd.mkdir(parents=True)
    write_json(rd / "config.json", {"config": cfg.to_dict(), "config_hash": cfg.config_hash()})
    rows: list[dict[str, float | str]] = [
        {"phase": "offline" if s == 0 else "online", "step": s, "online_step": s, "normalized_score": v}
        for s, v in curve]
    for f in refreshes if refreshes is not None else [{"online_step": 5}]:
        rows.append({"phase": "refresh", "step": f["online_step"], **f})
    rows.sort(key=lambda r: (float(r["online_step"]), r["phase"] != "refresh"))  # a refresh precedes its step's eval
    write_metrics(rd / "metrics.csv", rows)
    write_json(rd / "result.json", {"final_score": curve[-1][1]})


FINAL = {  # (aug, task) -> final scores of seeds 0..3
    ("none", "hopper"): [10.0, 20.0, 30.0, 40.0],
    ("none", "walker"): [50.0, 60.0, 70.0, 1000.0],
    ("cfdg", "hopper"): [35.0, 45.0, 55.0, 65.0],
    ("cfdg", "walker"): [15.0, 25.0, 75.0, 85.0],
}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for (aug, task), scores in FINAL.items():
        for seed, v in enumerate(scores):
            _fake_run(tmp_path / "runs", aug, task, seed, [(0, 1.0), (100, v / 2), (200, v)])
    # An unfinished run is listed but not aggregated.
    cfg = resolve_config("iql", "cfdg", "/data/hopper.hdf5", "small", 9)
    (tmp_path / "runs" / cfg.run_id()).mkdir()
    write_json(tmp_path / "runs" / cfg.run_id() / "config.json", {"config": cfg.to_dict()})
    write_metrics(tmp_path / "runs" / cfg.run_id() / "metrics.csv", [])
    return tmp_path / "runs"


def test_report_iqm_mean_and_poi_equal_hand_computation(runs: Path, tmp_path: Path) -> None:
    res = make_report([runs], tmp_path / "rep", reps=300, seed=0)
    m = res.aggregates["methods"]
    # IQM by hand: 8 scores sorted, drop the lowest 2 and highest 2, average the middle 4.
    none_sorted = sorted(FINAL[("none", "hopper")] + FINAL[("none", "walker")])  # 10 20 30 40 50 60 70 1000
    assert m["iql/none"]["iqm"][0] == pytest.approx((30 + 40 + 50 + 60) / 4)
    assert m["iql/none"]["mean"][0] == pytest.approx(sum(none_sorted) / 8)
    assert m["iql/cfdg"]["iqm"][0] == pytest.approx((35 + 45 + 55 + 65) / 4)  # 15 25 | 35 45 55 65 | 75 85
    for key in ("iql/none", "iql/cfdg"):
        point, lo, hi = m[key]["iqm"]
        assert lo <= point <= hi
    # P(cfdg > none): hopper: pairs x>y over 16 = (35>10,20,30)+(45>..40)+(55>4)+(65>4) = 3+4+4+4 = 15/16;
    # walker: 15>-,25>-,75>50,60,70 (3),85>50,60,70 (3) = 6/16. Average = (15/16 + 6/16) / 2.
    p, lo, hi = res.aggregates["probability_of_improvement"]["iql/cfdg>none"]
    assert p == pytest.approx((15 / 16 + 6 / 16) / 2)
    assert 0.0 <= lo <= p <= hi <= 1.0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| iql | none | 8 | 45.0 [" in md and "| iql | cfdg | 8 | 50.0 [" in md
    assert "1 unfinished run(s) left out" in md
    for f in ("report.md", "scores.csv", "aggregates.json", "poi_iql.png", "curves_iql_hopper.png", "curves_iql_walker.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0, f
    lines = (tmp_path / "rep" / "scores.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 16
    assert lines[0] == "algo,augmentation,task,seed,final_score,pretrained_score,run_dir"
    assert all(line.split(",")[5] == "1.0" for line in lines[1:])  # each fake run starts at 1.0
    assert all(line.split(",")[-1].startswith("../runs/iql-") for line in lines[1:])  # relative to the report


def test_stratified_bootstrap_resamples_within_tasks_only() -> None:
    # Each task column is constant, so every resample has the same mean: the CI collapses.
    m = np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    assert stratified_bootstrap_ci(lambda x: float(x.mean()), m, reps=50) == (3.0, 3.0)


def test_report_without_finished_runs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no finished runs"):
        make_report([tmp_path / "empty"], tmp_path / "rep")
    with pytest.raises(ReportError, match="no such folder"):
        make_report([tmp_path / "missing"], tmp_path / "rep")


def test_report_scores_runs_by_the_mean_of_their_last_evaluations_when_asked(runs: Path, tmp_path: Path) -> None:
    """--last 2: each run scores (v/2 + v) / 2 = 0.75 v, so every aggregate scales by 0.75; the
    pre-trained score (step 0) is reported beside it."""
    one = make_report([runs], tmp_path / "rep1", reps=300, seed=0)
    two = make_report([runs], tmp_path / "rep2", reps=300, seed=0, last=2)
    for key in ("iql/none", "iql/cfdg"):
        assert two.aggregates["methods"][key]["mean"][0] == pytest.approx(0.75 * one.aggregates["methods"][key]["mean"][0])
    assert "mean of the last 2 online evaluations" in two.markdown and "| pre-trained |" in two.markdown
    assert "| 1.0 |" in two.markdown  # every fake run starts at 1.0
    with pytest.raises(ReportError, match="last must be"):
        make_report([runs], tmp_path / "rep3", last=0)


def test_report_refuses_two_runs_of_the_same_method_task_and_seed(runs: Path, tmp_path: Path) -> None:
    cfg = resolve_config("iql", "none", "/data/hopper.hdf5", "small", 0, {"online_steps": 7})  # other settings
    rd = tmp_path / "other" / cfg.run_id()
    rd.mkdir(parents=True)
    write_json(rd / "config.json", {"config": cfg.to_dict(), "config_hash": cfg.config_hash()})
    write_metrics(rd / "metrics.csv", [{"phase": "online", "step": 7, "online_step": 7, "normalized_score": 3.0}])
    write_json(rd / "result.json", {"final_score": 3.0})
    with pytest.raises(ReportError, match="two finished runs of iql/none on hopper, seed 0"):
        make_report([runs, tmp_path / "other"], tmp_path / "rep")


def test_every_column_of_a_row_describes_the_runs_in_its_iqm(runs: Path, tmp_path: Path) -> None:
    """An extra none seed on hopper only cuts none to 4 seeds: the per-task cell, the pre-trained
    mean and the improved count leave the fifth run out as the IQM does."""
    _fake_run(runs, "none", "hopper", 4, [(0, 500.0), (100, 0.0), (200, 900.0)])
    res = make_report([runs], tmp_path / "rep", reps=100, seed=0)
    none = res.aggregates["methods"]["iql/none"]
    assert none["runs"] == 8 and none["per_task_mean"]["hopper"] == pytest.approx(25.0)
    assert none["pretrained_mean"] == pytest.approx(1.0)  # the seed-4 run (500) is not in it
    assert none["improved"] == [8, 8]
    assert "| iql | none | 8 | 45.0 [" in res.markdown and "| 1.0 | 8/8 |" in res.markdown
    assert any("cut to 4 seeds" in n for n in res.aggregates["notes"])


def test_improved_counts_runs_that_end_above_their_own_pre_trained_score(tmp_path: Path) -> None:
    for seed, (pre, final) in enumerate([(50.0, 60.0), (50.0, 40.0), (30.0, 30.0)]):
        _fake_run(tmp_path / "runs", "none", "hopper", seed, [(0, pre), (100, final)])
    res = make_report([tmp_path / "runs"], tmp_path / "rep", reps=100, seed=0)
    assert res.aggregates["methods"]["iql/none"]["improved"] == [1, 3]  # a tie is not an improvement
    assert "| 43.3 | 1/3 |" in res.markdown


def test_sign_test_is_the_exact_two_sided_binomial() -> None:
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(7, 4) == pytest.approx(2 * (1 + 11 + 55 + 165 + 330) / 2048)
    assert sign_test(4, 7) == sign_test(7, 4)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def test_paired_difference_ci_resamples_within_tasks() -> None:
    # Constant differences within each task: every resample has the same pooled mean.
    assert paired_difference_ci([np.array([2.0, 2.0, 2.0]), np.array([-1.0])], reps=50) == (1.25, 1.25)
    lo, hi = paired_difference_ci([np.array([0.0, 10.0, 20.0, 30.0])], reps=500)
    # the exact bootstrap percentiles (all 4^4 resamples enumerated) are 5.0 and 25.0; the resample
    # means move in steps of 2.5
    assert lo == pytest.approx(5.0, abs=2.5) and hi == pytest.approx(25.0, abs=2.5)


def test_rank_correlation_is_spearman() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert np.isnan(rank_correlation([1, 2], [2, 1])) and np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


def test_report_pairs_cfdg_with_each_baseline_by_task_and_seed(runs: Path, tmp_path: Path) -> None:
    """Differences cfdg - none: hopper +25 x 4, walker -35, -35, +5, -915; a none run with no cfdg
    partner (hopper seed 4) is not paired, and pairs are not cut to a common seed count."""
    _fake_run(runs, "none", "hopper", 4, [(0, 1.0), (100, 0.0), (200, 900.0)])
    res = make_report([runs], tmp_path / "rep", reps=300, seed=0)
    p = res.aggregates["paired"]["iql/cfdg-none"]
    assert (p["pairs"], p["above"], p["below"], p["same_pretrained_score"]) == (8, 5, 3, 8)
    mean, lo, hi = p["mean_difference"]
    assert mean == pytest.approx((4 * 25 - 35 - 35 + 5 - 915) / 8) and lo <= mean <= hi
    assert p["sign_test_p"] == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)
    # Sign-flip test by brute force: of the 2^8 signed sums of the differences, those at least |-880|.
    diffs = [25.0] * 4 + [-35.0, -35.0, 5.0, -915.0]
    sums = [abs(sum(s * d for s, d in zip(signs, diffs, strict=True)))
            for signs in itertools.product((-1, 1), repeat=8)]
    assert p["sign_flip_p"] == pytest.approx(sum(x >= 880.0 for x in sums) / 256)
    assert p["sign_flip"] == "exact"
    assert p["per_task_mean_difference"] == pytest.approx({"hopper": 25.0, "walker": -245.0})
    assert "| iql | cfdg − none | 8 | 5 / 3 | -110.0 [" in res.markdown
    assert "adds no spread" not in res.markdown  # every task has several pairs


def test_probability_of_improvement_uses_the_tasks_both_arms_have(tmp_path: Path) -> None:
    # none also ran a task cfdg has not (and the same number of tasks as cfdg would have with it):
    # the comparison is hopper against hopper only, never cfdg's hopper against none's walker.
    root = tmp_path / "runs"
    for seed, (c, n) in enumerate([(60.0, 10.0), (70.0, 20.0), (80.0, 30.0)]):
        _fake_run(root, "cfdg", "hopper", seed, [(0, 1.0), (200, c)])
        _fake_run(root, "none", "hopper", seed, [(0, 1.0), (200, n)])
        _fake_run(root, "none", "walker", seed, [(0, 1.0), (200, 1000.0)])
        _fake_run(root, "unconditional", "walker", seed, [(0, 1.0), (200, 1.0)])
    res = make_report([root], tmp_path / "rep", reps=200, seed=0)
    poi = res.aggregates["probability_of_improvement"]
    assert poi["iql/cfdg>none"][0] == pytest.approx(1.0)  # every cfdg hopper run beats every none hopper run
    assert "iql/cfdg>unconditional" not in poi
    assert "iql: P(cfdg > none) over the tasks both have: hopper" in res.markdown
    assert "iql: cfdg and unconditional share no task; no probability of improvement" in res.markdown


def test_paired_ci_is_flagged_when_a_task_has_one_pair(runs: Path, tmp_path: Path) -> None:
    # A third task with one pair: resampled within its task it is a constant, so the CI is too narrow.
    _fake_run(runs, "none", "cheetah", 0, [(0, 1.0), (200, 50.0)])
    _fake_run(runs, "cfdg", "cheetah", 0, [(0, 1.0), (200, 20.0)])
    res = make_report([runs], tmp_path / "rep", reps=300, seed=0)
    assert res.aggregates["paired"]["iql/cfdg-none"]["per_task_mean_difference"]["cheetah"] == pytest.approx(-30.0)
    assert ("- iql, cfdg − none: cheetah has one pair, which adds no spread to the bootstrap; the CI understates "
            "the uncertainty") in res.markdown


def test_report_shows_fidelity_at_each_refresh_against_the_return_after_it(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, (auc, final) in enumerate([(0.50, 40.0), (0.60, 50.0), (0.70, 60.0)]):
        fid = [{"online_step": 100, "fidelity_online_auc": auc, "fidelity_online_next_state_median": 0.1,
                "refresh_fit_seconds": 20.0, "refresh_sample_seconds": 1.0 + seed,
                "refresh_behaviour_accept_rate": 0.6},
               {"online_step": 200, "fidelity_online_auc": auc + 0.02, "refresh_fit_seconds": 10.0,
                "fidelity_online_next_state_median": float("nan")}]  # a failed measurement: left out
        _fake_run(root, "cfdg", "hopper", seed, [(0, 1.0), (100, 10.0 * seed), (150, 30.0 + seed), (300, final)], fid)
    _fake_run(root, "none", "hopper", 0, [(0, 1.0), (300, 45.0)], refreshes=[])
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    fid = res.aggregates["fidelity"]
    assert list(fid) == ["iql/cfdg/hopper"]  # runs without refreshes have no fidelity rows
    first, second = fid["iql/cfdg/hopper"]["per_refresh"]
    assert first["fidelity_online_auc"] == pytest.approx(0.60) and second["fidelity_online_auc"] == pytest.approx(0.62)
    assert first["fidelity_online_next_state_median"] == pytest.approx(0.1)
    assert second["fidelity_online_next_state_median"] is None  # not measured at that refresh
    assert first["score_after"] == pytest.approx(31.0)  # the first evaluation after step 100 is at 150
    assert second["score_after"] == pytest.approx(50.0)
    assert fid["iql/cfdg/hopper"]["spearman_online_auc_final"] == pytest.approx(1.0)
    # the refresh's cost beside its fidelity: mean sampling seconds (1, 2, 3) and acceptance
    assert "| iql | cfdg | hopper | 1 | 100 | 3 | 0.600 | 0.100 | – | – | 20 | 2.0 | 0.60 | 31.0 |" in res.markdown
    assert "| iql | cfdg | hopper | 2 | 200 | 3 | 0.620 | – | – | – | 10 | – | – | 50.0 |" in res.markdown
    assert (tmp_path / "rep" / "fidelity_iql.png").stat().st_size > 0
