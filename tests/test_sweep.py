"""`cfdg-aug sweep`: grid parsing, skipping finished runs, and a 2x2 grid through a local Ray instance."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cfdg_aug.config import ConfigError
from cfdg_aug.experiments.cli import app
from cfdg_aug.experiments.report import make_report
from cfdg_aug.experiments.runner import SMOKE_SET, write_json
from cfdg_aug.experiments.sweep import load_grid, parse_grid, run_sweep


def _grid(out: Path, **kw: object) -> dict:
    g = {"out": str(out), "profile": "small", "algos": ["iql"], "augmentations": ["none", "cfdg"],
         "datasets": ["embedded"], "seeds": 2, "set": {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in SMOKE_SET)}}
    g.update(kw)
    return g


def test_grid_expands_to_the_cross_product_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path / "out", seeds=[3, 4], augmentations=["none", "unconditional", "cfdg"])))
    spec = load_grid(path)
    cfgs = spec.configs()
    assert len(cfgs) == 6 and {c.seed for c in cfgs} == {3, 4}
    assert all(c.online_steps == 300 and c.cfdg["train_steps"] == 30 for c in cfgs)
    assert len({c.run_id() for c in cfgs}) == 6


def test_runs_that_prefit_start_first_so_that_they_pretrain_and_hide_their_prefit(tmp_path: Path) -> None:
    from cfdg_aug.experiments.sweep import start_order

    path = tmp_path / "grid.yaml"
    grid = _grid(tmp_path / "out", seeds=[0, 1], augmentations=["none", "cfdg"])
    grid["set"]["prefit_generator"] = True
    path.write_text(yaml.safe_dump(grid))
    cfgs = load_grid(path).configs()
    assert [(c.augmentation, c.seed) for c in cfgs] == [("none", 0), ("none", 1), ("cfdg", 0), ("cfdg", 1)]
    assert [(c.augmentation, c.seed) for c in start_order(cfgs)] == [("cfdg", 0), ("cfdg", 1), ("none", 0), ("none", 1)]
    path.write_text(yaml.safe_dump(_grid(tmp_path / "out", seeds=[0, 1], augmentations=["none", "cfdg"])))
    plain = load_grid(path).configs()
    assert start_order(plain) == plain  # nothing pre-fits: the grid's order


@pytest.mark.parametrize("bad, match", [
    ({"algos": ["dqn"]}, "algo must be one of"),
    ({"seeds": 0}, "seeds"),
    ({"frobnicate": 1}, "unknown grid field"),
    ({"datasets": []}, "datasets"),
    ({"set": {"cfdg.width": -1}}, "width"),
    ({"pretrained_dir": ["a"]}, "grid field 'pretrained_dir' must be a folder path string"),
])
def test_bad_grids_are_refused_naming_the_field(tmp_path: Path, bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_grid(_grid(tmp_path, **bad))


def test_sweep_skips_finished_runs_without_starting_workers(tmp_path: Path) -> None:
    spec = parse_grid(_grid(tmp_path / "out"))
    for c in spec.configs():
        (tmp_path / "out" / c.run_id()).mkdir(parents=True)
        write_json(tmp_path / "out" / c.run_id() / "result.json", {"final_score": 1.0})
    res = run_sweep(spec, workers=2, progress=False)
    assert [r["status"] for r in res] == ["skipped"] * 4


def test_a_grid_with_pretrained_dir_takes_its_agents_from_that_folder(tmp_path: Path) -> None:
    """Two grids over one pre-trained agent (e.g. a longer online phase in another folder): the
    second grid's run pre-trains nothing, and no ``out/pretrained`` appears."""
    import json

    short = {**_grid(tmp_path)["set"], "online_steps": 40, "warmup_steps": 10}  # the agent is what matters
    first = parse_grid(_grid(tmp_path / "a", augmentations=["none"], seeds=[0], set=short))
    assert [r["status"] for r in run_sweep(first, workers=1, progress=False)] == ["finished"]
    (agent,) = (p for p in (tmp_path / "a" / "pretrained").iterdir() if p.is_dir())
    stamp = agent.stat().st_mtime_ns
    second = parse_grid(_grid(tmp_path / "b", augmentations=["none"], seeds=[0],
                              set={**first.overrides, "online_steps": 50},
                              pretrained_dir=str(tmp_path / "a" / "pretrained")))
    assert [r["status"] for r in run_sweep(second, workers=1, progress=False)] == ["finished"]
    assert not (tmp_path / "b" / "pretrained").exists()
    (run,) = (p for p in (tmp_path / "b").iterdir() if p.is_dir())
    assert json.loads((run / "config.json").read_text())["pretrain_key"] == agent.name
    assert agent.stat().st_mtime_ns == stamp
    assert f"pre-trained agent reused from {agent}" in (run / "run.log").read_text()


def test_a_pretrained_dir_that_is_a_file_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    spec = parse_grid(_grid(tmp_path / "out", pretrained_dir=str(tmp_path / "afile")))
    with pytest.raises(ConfigError, match="grid field 'pretrained_dir' .*afile is a file, expected a folder"):
        run_sweep(spec, workers=1, progress=False)
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["sweep", str(_write(tmp_path / "g.yaml", _grid(tmp_path / "out"))),
                                   "--pretrained-dir", str(tmp_path / "afile")])
    assert res.exit_code == 2 and "error: --pretrained-dir" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def _write(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.slow
def test_sweep_2x2_on_local_ray_then_report(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path / "out")))
    res = CliRunner().invoke(app, ["sweep", str(path), "--workers", "2", "--ray-address", "local"])
    assert res.exit_code == 0, res.output
    assert "4/4 runs done" in res.output
    assert sum(1 for p in (tmp_path / "out").glob("*/result.json")) == 4
    # Finished runs are skipped the second time.
    res = CliRunner().invoke(app, ["sweep", str(path), "--workers", "2", "--ray-address", "local"])
    assert res.exit_code == 0 and res.output.count("skipped") == 4
    rep = make_report([tmp_path / "out"], tmp_path / "report", reps=200)
    assert rep.aggregates["methods"]["iql/none"]["runs"] == 2 and rep.aggregates["methods"]["iql/cfdg"]["runs"] == 2
    for f in ("report.md", "poi_iql.png", "curves_iql_embedded.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0


STUDY2 = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_study2_grids_hold_the_issue_grid_and_every_committed_run_belongs_to_them() -> None:
    """The committed Study 2 run folders are named by the run ids the grids compute, so a sweep skips
    them; a profile change that orphaned them (new ids, the study silently restarted) fails here."""
    grids = {name: load_grid(STUDY2 / f"study2{name}_grid.yaml").configs() for name in ("", "_pex", "_apl")}
    assert [len(grids[n]) for n in ("", "_pex", "_apl")] == [45, 30, 30]
    ids = {c.run_id() for cfgs in grids.values() for c in cfgs}
    committed = {p.parent.name for p in (STUDY2 / "study2" / "runs").glob("*/result.json")}
    assert committed, "no committed Study 2 runs found"
    assert committed <= ids, f"committed runs outside the grids: {sorted(committed - ids)}"


def test_the_200k_study_grid_names_every_committed_run_of_that_study() -> None:
    """Likewise for Study 2 on the 200K-transition sets, IQL and PEX parts (its datasets need not exist
    to compute ids)."""
    iql, pex = ({c.run_id() for c in load_grid(STUDY2 / f"study2_200k{name}_grid.yaml").configs()}
                for name in ("", "_pex"))
    assert (len(iql), len(pex)) == (45, 20)
    ids = iql | pex
    committed = {p.parent.name for p in (STUDY2 / "study2_200k" / "runs").glob("*/result.json")}
    assert len(committed) >= 30, "the hopper and halfcheetah arms are committed"
    assert committed <= ids, f"committed runs outside the grid: {sorted(committed - ids)}"


def test_the_pretraining_length_grid_names_every_committed_run_and_pairs_each_none_with_its_control() -> None:
    from cfdg_aug.experiments.runner import arm_name

    cfgs = load_grid(STUDY2 / "pretrain50k_grid.yaml").configs()
    assert len(cfgs) == 40 and {c.offline_steps for c in cfgs} == {50_000}
    arms = {(c.dataset, c.seed): [] for c in cfgs}
    for c in cfgs:
        arms[(c.dataset, c.seed)].append(arm_name(c.to_dict()))
    assert all(sorted(a) == ["none", "offline_only"] for a in arms.values())
    cfdg = load_grid(STUDY2 / "pretrain50k_cfdg_grid.yaml").configs()  # the cfdg arm, hopper only
    assert len(cfdg) == 5 and {arm_name(c.to_dict()) for c in cfdg} == {"cfdg"}
    assert {(c.dataset, c.seed) for c in cfdg} <= set(arms)  # beside a none run and its control
    ids = {c.run_id() for c in [*cfgs, *cfdg]}
    committed = {p.parent.name for p in (STUDY2 / "pretrain_length" / "runs").glob("*/result.json")}
    assert committed, "no committed runs of the pre-training length study found"
    assert committed <= ids, f"committed runs outside the grids: {sorted(committed - ids)}"


def test_the_room_grids_name_every_committed_run_and_share_the_random_sets_none_and_control_runs() -> None:
    """The random / medium-replay-like study (docs/results/room/): room_grid.yaml's none and control
    runs on the random sets are the same run ids as room_random_grid.yaml's, so the second grid's
    sweep skips them and every arm of a (task, seed) starts from one shared agent."""
    from cfdg_aug.experiments.runner import arm_name

    room = load_grid(STUDY2 / "room_grid.yaml").configs()
    random = load_grid(STUDY2 / "room_random_grid.yaml").configs()
    pex = load_grid(STUDY2 / "room_pex_grid.yaml").configs()
    apl = load_grid(STUDY2 / "room_apl_grid.yaml").configs()
    apl_hopper = load_grid(STUDY2 / "room_apl_hopper_grid.yaml").configs()  # seeds 5-9 of the hopper rows
    apl_s10 = load_grid(STUDY2 / "room_apl_hopper_s10_grid.yaml").configs()  # seeds 10-19, none and cfdg
    assert (len(room), len(random), len(pex), len(apl), len(apl_hopper), len(apl_s10)) == (24, 40, 18, 30, 15, 20)
    seeds = [{c.seed for c in g} for g in (apl, apl_hopper, apl_s10)]
    assert seeds[0].isdisjoint(seeds[1]) and seeds[2].isdisjoint(seeds[0] | seeds[1])
    assert {arm_name(c.to_dict()) for c in apl_s10} == {"none", "cfdg"}
    seed0 = {(c.dataset, arm_name(c.to_dict())): c.to_dict() for c in apl if c.seed == 0}
    for c in apl_hopper + apl_s10:  # the hopper rows of room_apl_grid.yaml, but for the seed
        assert {**seed0[(c.dataset, arm_name(c.to_dict()))], "seed": c.seed} == c.to_dict()
    assert {arm_name(c.to_dict()) for c in pex} == {"none", "offline_only", "cfdg"}
    assert {arm_name(c.to_dict()) for c in apl} == {arm_name(c.to_dict()) for c in apl_hopper} == {"none", "offline_only", "cfdg"}
    assert {arm_name(c.to_dict()) for c in room} == {"none", "offline_only"}
    assert {arm_name(c.to_dict()) for c in random} == {"none", "offline_only", "cfdg", "unconditional"}
    room_ids, random_ids = {c.run_id() for c in room}, {c.run_id() for c in random + pex + apl + apl_hopper + apl_s10}
    shared = {c.run_id() for c in random if c.seed < 2 and arm_name(c.to_dict()) in ("none", "offline_only")}
    assert len(shared) == 8 and shared <= room_ids
    committed = {p.parent.name for p in (STUDY2 / "room" / "runs").glob("*/result.json")}
    assert committed, "no committed runs of the room study found"
    assert committed <= room_ids | random_ids, f"committed runs outside the grids: {sorted(committed - room_ids - random_ids)}"


def test_the_long_online_grid_is_the_random_sets_grid_with_only_the_online_phase_lengthened() -> None:
    """room_long_grid.yaml (100K online steps) differs from the 25K grids in the online budget and the
    evaluation interval only, so its arms start from the same pre-trained agents (the pre-training
    key leaves online settings out) and their curves extend the 25K ones."""
    from cfdg_aug.experiments.runner import arm_name

    spec = load_grid(STUDY2 / "room_long_grid.yaml")
    assert spec.pretrained_dir == f"{load_grid(STUDY2 / 'room_random_grid.yaml').out}/pretrained"  # shares the agents
    long = spec.configs()
    short = {(c.dataset, c.seed, arm_name(c.to_dict())): c.to_dict()
             for c in load_grid(STUDY2 / "room_random_grid.yaml").configs()}
    assert len(long) == 18 and {arm_name(c.to_dict()) for c in long} == {"none", "offline_only", "cfdg"}
    for c in long:
        d = c.to_dict()
        assert (d.pop("online_steps"), d.pop("eval_every")) == (100000, 5000)
        ref = dict(short[(c.dataset, c.seed, arm_name(c.to_dict()))])
        ref.pop("online_steps"), ref.pop("eval_every")
        assert d == ref
    _assert_committed_runs_share_the_room_agents(long, STUDY2 / "room" / "long" / "runs")


def _assert_committed_runs_share_the_room_agents(grid: list, runs: Path) -> None:
    """Every committed run under ``runs`` is one of ``grid``'s, and started from the pre-trained agent
    the 25K room runs of its task and seed used."""
    import json

    ids = {c.run_id() for c in grid}
    committed = {p.parent.name for p in runs.glob("*/result.json")}
    assert committed, f"no committed runs under {runs}"
    assert committed <= ids, f"committed runs outside the grid: {sorted(committed - ids)}"
    keys = {(c["config"]["dataset"], c["config"]["seed"]): c["pretrain_key"]
            for c in (json.loads(p.read_text()) for p in (STUDY2 / "room" / "runs").glob("iql-*/config.json"))}
    for name in committed:
        c = json.loads((runs / name / "config.json").read_text())
        assert c["pretrain_key"] == keys[(c["config"]["dataset"], c["config"]["seed"])], name


def test_the_mahalanobis_grid_is_the_random_sets_cfdg_arm_at_the_new_filter_and_names_its_runs() -> None:
    """room_mahalanobis_grid.yaml repeats room_random_grid.yaml's cfdg arm with only the behaviour
    filter's statistic changed, from the same pre-trained agents, so each run pairs with that grid's
    none and log-likelihood cfdg runs of its task and seed."""
    spec = load_grid(STUDY2 / "room_mahalanobis_grid.yaml")
    assert spec.pretrained_dir == f"{load_grid(STUDY2 / 'room_random_grid.yaml').out}/pretrained"
    new = spec.configs()
    old = {(c.dataset, c.seed): c for c in load_grid(STUDY2 / "room_random_grid.yaml").configs()
           if c.augmentation == "cfdg"}
    assert len(new) == 10 and {c.augmentation for c in new} == {"cfdg"}
    for c in new:
        ref = old[(c.dataset, c.seed)]
        expected = ref.to_dict()
        assert expected["cfdg"].pop("behaviour_score") == "log_prob"  # the pin, which the new grid drops
        assert c.to_dict() == expected
        diff = {k for k, v in c.cfdg_config().to_dict().items() if ref.cfdg_config().to_dict()[k] != v}
        assert diff == {"behaviour_score"} and c.cfdg_config().behaviour_score == "mahalanobis"
    _assert_committed_runs_share_the_room_agents(new, STUDY2 / "room" / "mahalanobis" / "runs")


def test_the_redraws_grid_is_the_mahalanobis_grid_with_three_redraws_and_names_its_runs() -> None:
    """room_redraws_grid.yaml repeats room_mahalanobis_grid.yaml with only behaviour_redraws set, from
    the same pre-trained agents, so each run pairs with that grid's run of its task and seed."""
    spec = load_grid(STUDY2 / "room_redraws_grid.yaml")
    assert spec.pretrained_dir == load_grid(STUDY2 / "room_mahalanobis_grid.yaml").pretrained_dir
    new = spec.configs()
    old = {(c.dataset, c.seed): c for c in load_grid(STUDY2 / "room_mahalanobis_grid.yaml").configs()}
    assert len(new) == 10 and {(c.dataset, c.seed) for c in new} == set(old)
    for c in new:
        ref = old[(c.dataset, c.seed)]
        expected = ref.to_dict()
        # the redraws as these runs made them, pinned since the profile's cheaper redraws (2026-12-04)
        expected["cfdg"].update(behaviour_redraws=3, redraw_resample_sigma_max=None, redraw_in_terminal_search=True)
        assert c.to_dict() == expected
        diff = {k for k, v in c.cfdg_config().to_dict().items() if ref.cfdg_config().to_dict()[k] != v}
        # the mahalanobis runs redraw nothing, so their (today's) redraw settings compute what the pins did
        assert diff == {"behaviour_redraws", "redraw_resample_sigma_max", "redraw_in_terminal_search"}
        assert c.run_id() != ref.run_id()
    _assert_committed_runs_share_the_room_agents(new, STUDY2 / "room" / "redraws" / "runs")


def test_the_sigma3_redraws_grid_is_the_redraws_grid_at_todays_redraw_settings() -> None:
    """room_redraws_sigma3_grid.yaml repeats room_redraws_grid.yaml with only the two redraw settings
    the small profile changed on 2026-12-04, from the same agents, so each run pairs with that grid's
    run of its task and seed. Its pins are literals, so the grid means the same runs whatever the
    profile becomes (today they are the profile's values)."""
    spec = load_grid(STUDY2 / "room_redraws_sigma3_grid.yaml")
    ref_spec = load_grid(STUDY2 / "room_redraws_grid.yaml")
    assert spec.pretrained_dir == ref_spec.pretrained_dir
    new = spec.configs()
    old = {(c.dataset, c.seed): c for c in ref_spec.configs()}
    assert len(new) == 10 and {(c.dataset, c.seed) for c in new} == set(old)
    for c in new:
        ref = old[(c.dataset, c.seed)]
        expected = ref.to_dict()
        expected["cfdg"].update(redraw_resample_sigma_max=3.0, redraw_in_terminal_search=False)
        assert c.to_dict() == expected
        diff = {k for k, v in c.cfdg_config().to_dict().items() if ref.cfdg_config().to_dict()[k] != v}
        assert diff == {"redraw_resample_sigma_max", "redraw_in_terminal_search"}
        assert c.run_id() != ref.run_id()
    _assert_committed_runs_share_the_room_agents(new, STUDY2 / "room" / "redraws_sigma3" / "runs")


def test_the_utd4_grid_is_the_random_sets_none_and_cfdg_at_four_updates_per_step() -> None:
    """room_utd4_grid.yaml asks for the random sets' `none` (room_random_grid.yaml) and today's `cfdg`
    (room_redraws_sigma3_grid.yaml) with nothing changed but 4 updates per environment step, from
    the same agents, so each run pairs with its UTD-1 twin of that task and seed."""
    spec = load_grid(STUDY2 / "room_utd4_grid.yaml")
    assert spec.pretrained_dir == load_grid(STUDY2 / "room_redraws_sigma3_grid.yaml").pretrained_dir
    from cfdg_aug.experiments.runner import arm_name

    twins = {(arm_name(c.to_dict()), c.dataset, c.seed): c
             for grid in ("room_random_grid.yaml", "room_redraws_sigma3_grid.yaml")
             for c in load_grid(STUDY2 / grid).configs()}
    new = spec.configs()
    assert len(new) == 8 and {arm_name(c.to_dict()) for c in new} == {"none", "cfdg"}
    for c in new:
        twin = twins[(arm_name(c.to_dict()), c.dataset, c.seed)]
        assert c.updates_per_step == 4 and twin.updates_per_step == 1
        if c.augmentation == "cfdg":  # the same generator (`none` fits none; its grid pins filter settings)
            assert c.cfdg_config() == twin.cfdg_config()
        assert {k: v for k, v in c.to_dict().items() if k not in ("cfdg", "updates_per_step")} == \
            {k: v for k, v in twin.to_dict().items() if k not in ("cfdg", "updates_per_step")}
    _assert_committed_runs_share_the_room_agents(new, STUDY2 / "room" / "utd4" / "runs")


def _pretrain_keys(runs: Path) -> dict[tuple[str, int], set[str]]:
    """(dataset, seed) -> the pre-training keys of the committed runs under ``runs``."""
    import json

    keys: dict[tuple[str, int], set[str]] = {}
    for p in runs.glob("*/result.json"):
        c = json.loads((p.parent / "config.json").read_text())
        keys.setdefault((c["config"]["dataset"], c["config"]["seed"]), set()).add(c["pretrain_key"])
    return keys


def test_the_xeon_walker_grid_is_the_long_grids_walker_pairs_from_its_own_agents() -> None:
    """room_long_walker_xeon_grid.yaml makes the long grid's walker2d none and cfdg runs again (and
    adds seeds 3-4), from agents pre-trained on one CPU: seeds 0-2 have room_long_grid.yaml's run ids
    (the folder and agents are not part of a run's config), and both arms of a seed started from one
    agent."""
    from cfdg_aug.experiments.runner import arm_name

    spec = load_grid(STUDY2 / "room_long_walker_xeon_grid.yaml")
    assert spec.pretrained_dir == f"{spec.out}/pretrained"  # its own agents, not the AMD-made ones
    xeon = spec.configs()
    long = {c.run_id() for c in load_grid(STUDY2 / "room_long_grid.yaml").configs()
            if "walker2d" in c.dataset and arm_name(c.to_dict()) in ("none", "cfdg")}
    assert len(xeon) == 10 and {c.run_id() for c in xeon if c.seed < 3} == long  # the long grid has seeds 0-2
    runs = STUDY2 / "room" / "long_walker_xeon" / "runs"
    assert {p.parent.name for p in runs.glob("*/result.json")} == {c.run_id() for c in xeon}  # complete
    assert all(len(k) == 1 for k in _pretrain_keys(runs).values())  # both arms of a seed, one agent


def test_the_xeon_folder_holds_its_grids_runs_each_differing_from_its_partner_in_the_named_fields() -> None:
    """room_dynamics_xeon_grid.yaml is room_dynamics_grid.yaml, and room_redraws_xeon_grid.yaml is
    room_redraws_grid.yaml (the same run ids), made on one CPU into one folder from one set of agents,
    beside room_background_xeon_grid.yaml (the redraws grid with the background-refresh package) and
    room_none_xeon_grid.yaml (room_random_grid.yaml's first `none` runs), and the room_walker_s5_*
    grids (three of them on walker2d, seeds 5-9); room_dynamics_grid.yaml differs from the redraws
    grid in dynamics_steps only."""
    dyn, red = (load_grid(STUDY2 / f"room_{n}_grid.yaml") for n in ("dynamics_xeon", "redraws_xeon"))
    assert (dyn.out, dyn.pretrained_dir) == (red.out, red.pretrained_dir) == (dyn.out, f"{dyn.out}/pretrained")
    assert [c.run_id() for c in dyn.configs()] == [c.run_id() for c in load_grid(STUDY2 / "room_dynamics_grid.yaml").configs()]
    assert [c.run_id() for c in red.configs()] == [c.run_id() for c in load_grid(STUDY2 / "room_redraws_grid.yaml").configs()]
    for d, r in zip(dyn.configs(), red.configs(), strict=True):
        assert (d.dataset, d.seed) == (r.dataset, r.seed)
        diff = {k for k, v in d.cfdg_config().to_dict().items() if r.cfdg_config().to_dict()[k] != v}
        assert diff == {"dynamics_steps"} and d.cfdg_config().dynamics_steps == 20000
    runs = STUDY2 / "room" / "dynamics_xeon" / "runs"
    assert dyn.out == "docs/results/room/dynamics_xeon/runs"
    bg, none = (load_grid(STUDY2 / f"room_{n}_grid.yaml") for n in ("background_xeon", "none_xeon"))
    assert {(g.out, g.pretrained_dir) for g in (bg, none)} == {(dyn.out, dyn.pretrained_dir)}
    assert {c.run_id() for c in none.configs()} <= {c.run_id() for c in load_grid(STUDY2 / "room_random_grid.yaml").configs()}
    for b, r in zip(bg.configs(), red.configs(), strict=True):  # the background package only
        assert (b.dataset, b.seed, b.prefit_generator, r.prefit_generator) == (r.dataset, r.seed, True, False)
        diff = {k for k, v in b.cfdg_config().to_dict().items() if r.cfdg_config().to_dict()[k] != v}
        assert diff == {"refresh_lag", "online_batch_fraction"}
    # seeds 5-9 of walker2d for three of the arms: the same fields, other seeds
    more = [load_grid(STUDY2 / f"room_walker_s5_{n}_xeon_grid.yaml") for n in ("redraws", "background", "none")]
    for g, base in zip(more, (red, bg, none), strict=True):
        assert (g.out, g.pretrained_dir, g.seeds) == (base.out, base.pretrained_dir, [5, 6, 7, 8, 9])
        assert g.datasets == [d for d in base.datasets if "walker2d" in d] and g.overrides == base.overrides
        assert g.augmentations == base.augmentations
    ids = {c.run_id() for g in (dyn, red, bg, none, *more) for c in g.configs()}
    assert {p.parent.name for p in runs.glob("*/result.json")} <= ids
    assert all(len(k) == 1 for k in _pretrain_keys(runs).values())  # partners share their agent


def test_the_prefit_grids_change_only_the_prefit_fields_and_their_runs_share_the_redraws_runs_agents() -> None:
    """room_prefit_sync_grid.yaml is room_redraws_grid.yaml with the pre-fit (and the batch mix it
    needs); room_background_walker_grid.yaml is its walker2d half with the lag added. All three
    take their agents from one folder, so every run in room/prefit/runs pairs with the redraws run
    of its task and seed (one pre-training key per task and seed across both folders)."""
    red, pre, bg = (load_grid(STUDY2 / f"room_{n}_grid.yaml") for n in ("redraws", "prefit_sync", "background_walker"))
    assert red.pretrained_dir == pre.pretrained_dir == bg.pretrained_dir and pre.out == bg.out
    for p, r in zip(pre.configs(), red.configs(), strict=True):
        assert (p.dataset, p.seed, p.prefit_generator, r.prefit_generator) == (r.dataset, r.seed, True, False)
        diff = {k for k, v in p.cfdg_config().to_dict().items() if r.cfdg_config().to_dict()[k] != v}
        assert diff == {"online_batch_fraction"} and p.cfdg_config().online_batch_fraction == 0.5
    walker = [c for c in pre.configs() if "walker2d" in c.dataset]
    for b, p in zip(bg.configs(), walker, strict=True):
        diff = {k for k, v in b.cfdg_config().to_dict().items() if p.cfdg_config().to_dict()[k] != v}
        assert (b.seed, b.prefit_generator, diff) == (p.seed, True, {"refresh_lag"})
        assert b.cfdg_config().prefit_fields() == p.cfdg_config().prefit_fields()  # one pre-fit serves both
    runs = STUDY2 / "room" / "prefit" / "runs"
    assert {p.parent.name for p in runs.glob("*/result.json")} <= {c.run_id() for g in (pre, bg) for c in g.configs()}
    keys = _pretrain_keys(runs)
    for k, v in _pretrain_keys(STUDY2 / "room" / "redraws" / "runs").items():
        assert keys.get(k, v) == v  # the same agent as the redraws run of that task and seed
