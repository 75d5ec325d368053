"""`cfdg-aug report` says when it pools or compares runs whose settings differ, and what its
statistics can and cannot show at a few seeds: notes on mixed settings (generator precision,
budgets, dataset folders), single-seed methods and missing tasks, and the paired sign-flip test."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cfdg_aug.experiments.report import make_report, run_settings, sign_flip_test
from cfdg_aug.experiments.runner import resolve_config, write_json, write_metrics


def _run(root: Path, aug: str, task: str, seed: int, final: float, *, algo: str = "iql",
         precision: str | None = None, overrides: dict[str, Any] | None = None,
         folder: str = "/data") -> Path:
    """A finished run folder as tests/test_report.py builds them; ``precision``: the generator
    precision the runner records in ``config.json`` (both training and sampling)."""
    cfg = resolve_config(algo, aug, f"{folder}/{task}.hdf5", "small", seed, overrides)
    rd = root / cfg.run_id()
    rd.mkdir(parents=True)
    stored: dict[str, Any] = {"config": cfg.to_dict(), "config_hash": cfg.config_hash(),
                              "cfdg_config": cfg.cfdg_config().to_dict()}
    if precision is not None:
        stored["generator_precision"] = {"training": precision, "sampling": precision}
    write_json(rd / "config.json", stored)
    write_metrics(rd / "metrics.csv", [
        {"phase": "offline", "step": 0, "online_step": 0, "normalized_score": 1.0},
        {"phase": "online", "step": 100, "online_step": 100, "normalized_score": final}])
    write_json(rd / "result.json", {"final_score": final})
    return rd


def _grid(root: Path, arms: dict[str, list[float]], tasks: tuple[str, ...] = ("hopper", "walker"),
          precision: dict[str, list[str | None]] | None = None) -> None:
    """``arms``: final scores by seed (the same on every task); ``precision``: per arm, per seed."""
    for arm, finals in arms.items():
        for task in tasks:
            for seed, v in enumerate(finals):
                prec = (precision or {}).get(arm, [None] * len(finals))[seed]
                _run(root, arm, task, seed, v + (5.0 if task == "walker" else 0.0), precision=prec)


def _notes(md: str) -> list[str]:
    return md.split("## Notes", 1)[1].splitlines() if "## Notes" in md else []


# --- settings notes --------------------------------------------------------------------------------------
def test_a_mixed_precision_arm_is_noted_naming_the_values_and_counts(tmp_path: Path) -> None:
    """cfdg: bfloat16 in seeds 0-3 on both tasks, float32 in seed 4 of walker (as study2_200k's
    walker2d seed 4); every number is the same as without the note."""
    root = tmp_path / "runs"
    _grid(root, {"none": [10.0, 20.0, 30.0, 40.0, 50.0], "cfdg": [12.0, 18.0, 35.0, 41.0, 49.0]},
          precision={"cfdg": ["bfloat16"] * 5})
    uniform = make_report([root], tmp_path / "rep_uniform", reps=100, seed=0)
    assert "pools runs" not in uniform.markdown and "compares runs that differ" not in uniform.markdown
    walker4 = next(root.glob("iql-cfdg-walker-s4-*")) / "config.json"
    stored = json.loads(walker4.read_text())
    stored["generator_precision"] = {"training": "float32", "sampling": "float32"}
    walker4.write_text(json.dumps(stored))
    mixed = make_report([root], tmp_path / "rep_mixed", reps=100, seed=0)
    expected = ("- iql/cfdg pools runs that differ in generator_precision.sampling (bfloat16: 9 runs, "
                "float32: 1 run (walker s4)); generator_precision.training (bfloat16: 9 runs, float32: 1 run "
                "(walker s4)): its aggregates and pairs mix these settings")
    assert any(line.startswith(expected) for line in _notes(mixed.markdown)), mixed.markdown
    assert any(n.startswith(expected[2:]) for n in mixed.aggregates["notes"])
    # none has no generator: its precision is not compared with cfdg's, and none alone is uniform.
    assert "iql/none pools" not in mixed.markdown and "cfdg − none" not in "\n".join(_notes(mixed.markdown))
    # A note, never a refusal, and no number moves.
    for key in ("methods", "probability_of_improvement", "paired"):
        assert mixed.aggregates[key] == uniform.aggregates[key]


def test_two_arms_each_uniform_but_at_other_precisions_are_noted_as_a_comparison(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _grid(root, {"unconditional": [10.0, 20.0, 30.0], "cfdg": [12.0, 18.0, 35.0]},
          precision={"unconditional": ["float32"] * 3, "cfdg": ["bfloat16"] * 3})
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    notes = _notes(res.markdown)
    assert not any("pools runs" in n for n in notes)
    assert ("- iql: cfdg − unconditional (paired and probability of improvement) compares runs that differ "
            "in generator_precision.sampling on hopper, walker (cfdg: bfloat16: 6 runs; unconditional: "
            "float32: 6 runs); generator_precision.training on hopper, walker (cfdg: bfloat16: 6 runs; "
            "unconditional: float32: 6 runs)") in notes


def test_arms_mixed_alike_are_left_to_their_own_notes_unless_a_pair_differs(tmp_path: Path) -> None:
    """Both arms: bfloat16 in seeds 0-1, float32 in seed 2: every pair matches, so only the arms'
    own notes. Then unconditional's float32 run is seed 0 instead: same counts, but pairs differ."""
    root = tmp_path / "runs"
    prec: list[str | None] = ["bfloat16", "bfloat16", "float32"]
    _grid(root, {"unconditional": [10.0, 20.0, 30.0], "cfdg": [12.0, 18.0, 35.0]}, tasks=("hopper",),
          precision={"unconditional": prec, "cfdg": prec})
    notes = _notes(make_report([root], tmp_path / "rep", reps=100, seed=0).markdown)
    assert sum("pools runs that differ in generator_precision" in n for n in notes) == 2
    assert not any("compares runs" in n for n in notes)
    for seed, value in ((0, "float32"), (2, "bfloat16")):
        path = next(root.glob(f"iql-unconditional-hopper-s{seed}-*")) / "config.json"
        stored = json.loads(path.read_text())
        stored["generator_precision"] = {"training": value, "sampling": value}
        path.write_text(json.dumps(stored))
    notes = _notes(make_report([root], tmp_path / "rep2", reps=100, seed=0).markdown)
    expected = ("- iql: cfdg − unconditional (paired and probability of improvement) compares runs that "
                "differ in generator_precision.sampling on hopper (cfdg: bfloat16: 2 runs, float32: 1 run "
                "(hopper s2); unconditional: bfloat16: 2 runs, float32: 1 run (hopper s0))")
    assert any(n.startswith(expected) for n in notes)


def test_budgets_and_dataset_folders_that_differ_are_noted(tmp_path: Path) -> None:
    """Seed 2 of none ran other online budgets and read its hopper data from another folder."""
    root = tmp_path / "runs"
    for seed in range(3):
        for task in ("hopper", "walker"):
            _run(root, "cfdg", task, seed, 30.0 + seed)
            other = seed == 2
            _run(root, "none", task, seed, 20.0 + seed,
                 overrides={"online_steps": 20_000, "eval_episodes": 3} if other else None,
                 folder="/old" if other and task == "hopper" else "/data")
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    notes = _notes(res.markdown)
    pooled = next(n for n in notes if n.startswith("- iql/none pools runs"))
    assert "dataset (/data/{task}.hdf5: 5 runs, /old/{task}.hdf5: 1 run (hopper s2))" in pooled
    assert "eval_episodes (10: 4 runs, 3: 2 runs (hopper s2; walker s2))" in pooled
    assert "online_steps (25000: 4 runs, 20000: 2 runs (hopper s2; walker s2))" in pooled
    compared = next(n for n in notes if n.startswith("- iql: cfdg − none"))
    assert ("online_steps on hopper, walker (cfdg: 25000: 6 runs; none: 25000: 4 runs, 20000: 2 runs "
            "(hopper s2; walker s2))") in compared
    assert "dataset on hopper (cfdg: /data/{task}.hdf5: 3 runs; none: /data/{task}.hdf5: 2 runs, " in compared
    assert "iql/cfdg pools" not in res.markdown


def test_settings_that_define_an_arm_or_apply_to_one_arm_only_are_not_flagged(tmp_path: Path) -> None:
    """offline_only is none with real_mix=fixed, ratio_online=0; none leaves out actor_data (it has no
    synthetic rows) and cfdg has generator settings and a precision: none of that is a difference.
    Each arm runs on its own dataset (one per task): the task's name is not a difference either."""
    root = tmp_path / "runs"
    _grid(root, {"none": [10.0, 20.0, 30.0], "offline_only": [9.0, 21.0, 28.0], "cfdg": [12.0, 18.0, 35.0]},
          precision={"cfdg": ["bfloat16"] * 3})
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    assert set(res.aggregates["paired"]) == {"iql/cfdg-none", "iql/cfdg-offline_only",
                                             "iql/none-offline_only"}
    assert not [n for n in _notes(res.markdown) if "differ" in n], res.markdown
    # offline_only is stored as augmentation none (its run ids too): told apart by its settings.
    stored_none = [json.loads(p.read_text()) for p in sorted(root.glob("iql-none-hopper-s0-*/config.json"))]
    (control,) = [s for s in stored_none if s["config"]["cfdg"].get("ratio_online") == 0]
    (plain,) = [s for s in stored_none if s is not control]
    none, offline_only = run_settings(plain, "none"), run_settings(control, "offline_only")
    assert none["cfdg.real_mix"] == "proportional" and none["cfdg.ratio_online"] == "1"
    assert "cfdg.width" not in none and "actor_data" not in none and "generator_precision" not in none
    assert offline_only == {k: v for k, v in none.items() if k not in ("cfdg.real_mix", "cfdg.ratio_online")}
    stored = json.loads(next(root.glob("iql-cfdg-hopper-s0-*/config.json")).read_text())
    cfdg = run_settings(stored, "cfdg")
    assert cfdg["dataset"] == "/data/{task}.hdf5" and cfdg["actor_data"] == "real"
    assert cfdg["generator_precision.training"] == "bfloat16" and "cfdg.width" in cfdg
    assert not {"seed", "augmentation", "algo", "cfdg.augmentation"} & set(cfdg)


def test_an_environment_named_per_task_is_compared_within_its_task_only(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in range(2):
        _run(root, "none", "hopper", seed, 10.0 + seed, overrides={"env_id": "Hopper-v4"})
        _run(root, "none", "walker", seed, 20.0 + seed, overrides={"env_id": "Walker2d-v4"})
    assert "env_id" not in make_report([root], tmp_path / "rep", reps=100, seed=0).markdown
    _run(root, "none", "walker", 2, 22.0)
    notes = _notes(make_report([root], tmp_path / "rep2", reps=100, seed=0).markdown)
    assert any("iql/none pools runs that differ in env_id (" in n and "unset: 1 run (walker s2)" in n
               for n in notes)


def test_a_default_spelled_out_is_the_default_left_out(tmp_path: Path) -> None:
    """to_dict leaves defaults out (exploration_scale 1, online_actor_lr unset): an old config
    without a setting and a new one that spells out its default are the same settings."""
    rd = _run(tmp_path / "runs", "cfdg", "hopper", 0, 10.0)
    stored = json.loads((rd / "config.json").read_text())
    spelled = json.loads(json.dumps(stored))
    spelled["config"].update({"exploration_scale": 1.0, "online_actor_lr": None, "checkpoint_every": 2500.0})
    stored["config"]["checkpoint_every"] = 2500
    assert run_settings(spelled, "cfdg") == run_settings(stored, "cfdg")
    spelled["config"]["exploration_scale"] = 0.5
    assert run_settings(spelled, "cfdg")["exploration_scale"] == "0.5"


def test_a_run_recorded_before_the_behaviour_score_reads_as_the_log_likelihood_filter_it_ran(tmp_path: Path) -> None:
    """Its recorded generator config has no behaviour_score: it filtered by log-likelihood, which a
    grid pinning log_prob reproduces, and which today's default does not."""
    old = json.loads((_run(tmp_path / "a", "cfdg", "hopper", 0, 10.0) / "config.json").read_text())
    del old["cfdg_config"]["behaviour_score"]
    pinned = _run(tmp_path / "b", "cfdg", "hopper", 0, 10.0, overrides={"cfdg": {"behaviour_score": "log_prob"}})
    new = _run(tmp_path / "c", "cfdg", "hopper", 0, 10.0)
    stored = {"old": old, "pinned": json.loads((pinned / "config.json").read_text()),
              "new": json.loads((new / "config.json").read_text())}
    read = {name: run_settings(d, "cfdg")["cfdg.behaviour_score"] for name, d in stored.items()}
    assert read == {"old": "log_prob", "pinned": "log_prob", "new": "mahalanobis"}
    del old["cfdg_config"]  # recorded before the generator config was: the same answer
    assert run_settings(old, "cfdg")["cfdg.behaviour_score"] == "log_prob"


# --- single seeds, missing tasks -------------------------------------------------------------------------
def test_a_single_seed_method_is_noted_for_its_zero_width_ci(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _grid(root, {"none": [10.0, 20.0, 30.0]})
    _grid(root, {"cfdg": [15.0]})
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    _, lo, hi = res.aggregates["methods"]["iql/cfdg"]["iqm"]
    assert lo == hi
    notes = _notes(res.markdown)
    assert any(n.startswith("- iql/cfdg has one seed per task: its bootstrap CIs have zero width")
               for n in notes)
    assert not any(n.startswith("- iql/none has one seed") for n in notes)


def test_a_method_cut_to_one_seed_is_noted_too(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _run(root, "none", "hopper", 0, 10.0)
    _run(root, "none", "hopper", 1, 20.0)
    _run(root, "none", "walker", 0, 30.0)
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    assert "iql/none has one seed per task after that cut" in res.markdown
    assert "iql/none: unequal seed counts per task, cut to 1 seeds" in res.markdown


def test_a_method_missing_a_task_is_noted_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _grid(root, {"none": [10.0, 20.0]}, tasks=("hopper", "walker", "cheetah"))
    _grid(root, {"cfdg": [12.0, 25.0]}, tasks=("hopper",))
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    assert ("- iql/cfdg has no runs on cheetah, walker: aggregated over its own tasks only, so its IQM and "
            "mean are not comparable with those of rows over more tasks") in _notes(res.markdown)


def test_per_task_cells_show_the_sample_std(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, (h, w) in enumerate([(10.0, 40.0), (20.0, 60.0), (30.0, 50.0)]):
        _run(root, "none", "hopper", seed, h)
        _run(root, "none", "walker", seed, w)
    _run(root, "cfdg", "hopper", 0, 40.0)
    res = make_report([root], tmp_path / "rep", reps=100, seed=0)
    # ddof 1: sqrt(((-10)^2 + 0 + 10^2) / 2) = 10 (the population std would be 8.2); one run: 0.
    assert "| 20.0 ± 10.0 | 50.0 ± 10.0 |" in res.markdown and "| 40.0 ± 0.0 | – |" in res.markdown
    assert "mean ± sample std (ddof 1; 0 with a single run)" in res.markdown


# --- sign-flip permutation test ----------------------------------------------------------------------------
def test_sign_flip_test_equals_hand_computation() -> None:
    # [1, 2, 3]: of the 8 signed sums (±1 ±2 ±3) only +6 and -6 reach |6|.
    assert sign_flip_test([np.array([1.0, 2.0, 3.0])]) == pytest.approx(2 / 8)
    # [1, -1]: the observed sum is 0, which every pattern reaches.
    assert sign_flip_test([np.array([1.0, -1.0])]) == 1.0
    # Split over tasks, the same differences: the statistic is the mean of all of them.
    assert sign_flip_test([np.array([1.0]), np.array([2.0, 3.0])]) == pytest.approx(2 / 8)
    assert sign_flip_test([np.array([5.0] * 5)]) == pytest.approx(2 / 32)  # the smallest p at 5 pairs
    assert sign_flip_test([np.array([0.0, 0.0])]) == 1.0 and sign_flip_test([]) == 1.0
    # A zero difference is the same under either sign: the p-value is that of the others.
    assert sign_flip_test([np.array([1.0, 2.0, 3.0, 0.0])]) == pytest.approx(2 / 8)


def test_sign_flip_test_is_the_brute_force_enumeration() -> None:
    rng = np.random.default_rng(3)
    for n in (4, 7, 10):
        d = np.round(rng.normal(1.0, 3.0, n), 1)
        obs = abs(d.mean())
        means = [abs(np.dot(s, d) / n) for s in itertools.product((-1.0, 1.0), repeat=n)]
        expected = sum(m >= obs - 1e-9 for m in means) / 2**n
        assert sign_flip_test([d[: n // 2], d[n // 2:]]) == pytest.approx(expected)


def test_sign_flip_test_is_deterministic_and_monte_carlo_above_the_exact_limit() -> None:
    d = [np.linspace(-1.0, 4.0, 15), np.linspace(-2.0, 3.0, 15)]  # 30 differences: Monte Carlo
    p = sign_flip_test(d, seed=7)
    assert p == sign_flip_test(d, seed=7) and 0 < p < 1
    assert sign_flip_test(d, seed=8) == pytest.approx(p, abs=0.01)  # another seed: the same up to MC error
    # Exact and Monte Carlo agree where both apply.
    small = [np.array([0.5, -1.0, 2.0, 3.0, 1.5, -0.5, 2.5, 1.0])]
    monte_carlo = sign_flip_test(small, exact_max=0, draws=20_000, seed=1)
    assert monte_carlo == pytest.approx(sign_flip_test(small), abs=0.02)
    assert sign_flip_test([np.full(40, 1.0)], seed=0) == pytest.approx(1 / 100_001)  # never 0


def test_paired_section_reports_the_sign_flip_p(tmp_path: Path) -> None:
    """cfdg − none: +1, +2, +3 on hopper (seeds 0-2): p = 2/8; the bootstrap CI stays beside it."""
    root = tmp_path / "runs"
    for seed, (c, n) in enumerate([(11.0, 10.0), (22.0, 20.0), (33.0, 30.0)]):
        _run(root, "cfdg", "hopper", seed, c)
        _run(root, "none", "hopper", seed, n)
    res = make_report([root], tmp_path / "rep", reps=200, seed=0)
    p = res.aggregates["paired"]["iql/cfdg-none"]
    assert p["sign_flip_p"] == pytest.approx(0.25) and p["sign_flip"] == "exact"
    assert p["sign_test_p"] == pytest.approx(0.25)
    assert "| sign-flip p | sign test p |" in res.markdown
    assert "| iql | cfdg − none | 3 | 3 / 0 | +2.0 [" in res.markdown
    assert "] | 0.250 | 0.25 | 3/3 |" in res.markdown
    assert "sign-flip p is a two-sided paired permutation test" in res.markdown
