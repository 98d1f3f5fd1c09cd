from pathlib import Path

import pytest

from busi_study.cli import REPO, run_all_main
from busi_study.errors import ParameterError
from busi_study.params import apply_overrides, load_profile, parse_override


def test_profiles_load_and_inherit():
    default = load_profile("default", REPO / "params")
    smoke = load_profile("smoke", REPO / "params")
    assert set(smoke) == set(default)
    assert default["seed"] == 42 and default["n_splits"] == 5
    assert smoke["figure_dpi"] != default["figure_dpi"]


def test_unknown_profile_and_unknown_key(tmp_path):
    with pytest.raises(ParameterError, match="unknown profile"):
        load_profile("nope", REPO / "params")
    (tmp_path / "default.yaml").write_text("seed: 1\n")
    (tmp_path / "typo.yaml").write_text("inherits: default\nsed: 2\n")
    with pytest.raises(ParameterError, match="sed"):
        load_profile("typo", tmp_path)
    (tmp_path / "broken.yaml").write_text("seed: [1,\n")
    with pytest.raises(ParameterError, match="cannot parse"):
        load_profile("broken", tmp_path)


def test_overrides_are_typed():
    params = {"seed": 42, "ssim_min": None, "flag": False, "data_source": "kaggle"}
    assert parse_override("seed=7") == ("seed", 7)
    assert parse_override("ssim_min=0.5") == ("ssim_min", 0.5)
    assert apply_overrides(params, {"seed": 7})["seed"] == 7
    assert apply_overrides(params, {"ssim_min": 0.4})["ssim_min"] == 0.4
    with pytest.raises(ParameterError, match="unknown parameter"):
        apply_overrides(params, {"sede": 1})
    with pytest.raises(ParameterError, match="must be a number"):
        apply_overrides(params, {"seed": "abc"})
    with pytest.raises(ParameterError, match="true or false"):
        apply_overrides(params, {"flag": 3})
    with pytest.raises(ParameterError, match="key=value"):
        parse_override("seed")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such file or folder"),
        (["--set", "bogus=1", "--list"], "unknown parameter 'bogus'"),
        (["--only", "99", "--list"], "no notebook matches 99"),
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--seed", "1", "--set", "n_splits=x", "--list"], "must be a number"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert run_all_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_list_resolves_parameters(capsys):
    assert run_all_main(["--demo", "--seed", "7", "--only", "01", "--list"]) == 0
    out = capsys.readouterr().out
    assert "01_eda_intensity.ipynb" in out and "00_download" not in out
    assert "  seed: 7" in out and "  data_source: demo" in out


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit):
        run_all_main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--demo", "--profile", "--only", "--from", "--seed", "--set"):
        assert flag in out


def test_only_without_a_previous_complete_run_is_refused(tmp_path, capsys):
    code = run_all_main(["--demo", "--only", "01", "--reports-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")])
    assert code == 2
    assert "needs an earlier complete run with the same data and profile" in capsys.readouterr().err


def test_previous_complete_run_is_the_newest_real_run_not_the_latest_link(tmp_path):
    import json

    from busi_study.report.runner import previous_complete_run

    def run(name, started, ok=True, demo=True, profile="smoke", marker=True):
        d = tmp_path / name
        d.mkdir()
        meta = {"ok": ok, "demo": demo, "profile": profile, "started_utc": started,
                "params": {"data_source": "demo"}}
        (d / "run.json").write_text(json.dumps(meta))
        if ok and marker:  # the runner's completion marker
            (d / "COMPLETE.json").write_text(json.dumps({"run_id": name}))
        return d

    run("a", "2026-01-01T00:00:00+00:00")
    b = run("b", "2026-01-02T00:00:00+00:00")
    run("c", "2026-01-03T00:00:00+00:00", ok=False)  # failed: not complete
    run("d", "2026-01-04T00:00:00+00:00", profile="default")  # another profile
    run("e", "2026-01-05T00:00:00+00:00", marker=False)  # a run.json saying ok (e.g. copied into an interrupted run)
    f = run("f", "2026-01-06T00:00:00+00:00", marker=False)
    (f / "COMPLETE.json").write_text(json.dumps({"run_id": "b"}))  # a marker carried over from another run
    run("reference", "2026-01-05T00:00:00+00:00")  # reports/reference: committed numbers, not a run to extend
    (tmp_path / "latest").symlink_to("b", target_is_directory=True)
    for _ in range(3):  # directory order must not matter
        assert previous_complete_run(tmp_path, True, "smoke", "demo") == b.resolve()
    assert previous_complete_run(tmp_path, False, "smoke", "demo") is None


def _complete_run(reports: Path, name: str, profile: str, params: dict, notebooks=("00_download", "01_eda_intensity")):
    import json

    d = reports / name
    (d / "notebooks").mkdir(parents=True)
    for nb in notebooks:
        (d / "notebooks" / f"{nb}.ipynb").write_text("{}")
    meta = {"ok": True, "demo": True, "profile": profile, "started_utc": "2026-01-01T00:00:00+00:00",
            "params": {"data_source": "demo", **params}}
    (d / "run.json").write_text(json.dumps(meta))
    (d / "COMPLETE.json").write_text(json.dumps({"run_id": name}))
    return d


def test_profile_lineage_follows_inherits(tmp_path):
    from busi_study.report.runner import profile_lineage

    (tmp_path / "base.yaml").write_text("seed: 1\n")
    (tmp_path / "mid.yaml").write_text("inherits: base\nseed: 2\n")
    (tmp_path / "top.yaml").write_text("inherits: mid\n")
    assert profile_lineage("top", tmp_path) == ["top", "mid", "base"]
    assert profile_lineage("base", tmp_path) == ["base"]
    assert profile_lineage("ablation", REPO / "params")[:2] == ["ablation", "reference"]


def test_a_profile_builds_on_the_profile_it_inherits(tmp_path):
    """ablation inherits reference: with no complete ablation run, --only builds on the reference run."""
    from busi_study.report.runner import previous_complete_run

    ref = _complete_run(tmp_path, "r1", "reference", {})
    assert previous_complete_run(tmp_path, True, "ablation", "demo") is None
    assert previous_complete_run(tmp_path, True, ["ablation", "reference", "default"], "demo") == ref.resolve()
    own = _complete_run(tmp_path, "a1", "ablation", {})
    assert previous_complete_run(tmp_path, True, ["ablation", "reference", "default"], "demo") == own.resolve()


def test_carried_notebooks_must_have_run_with_the_same_parameters():
    from busi_study.report.runner import carried_parameter_differences

    nb = REPO / "notebooks" / "01_eda_intensity.ipynb"
    params = {"seed": 42, "gallery_groups": 12, "report_dir": "/a", "run_id": "x"}
    same = {"seed": 42, "gallery_groups": 12, "report_dir": "/b", "run_id": "y"}  # runner-set keys differ: fine
    assert carried_parameter_differences([nb], params, same) == []
    diff = carried_parameter_differences([nb], params, {**same, "gallery_groups": 3})
    assert len(diff) == 1 and diff[0].startswith("01_eda_intensity: gallery_groups 12")


def test_only_refuses_to_carry_over_notebooks_run_with_other_parameters(tmp_path, capsys):
    import json

    reports = tmp_path / "r"
    prev = _complete_run(reports, "r1", "smoke", {})
    # the previous run's parameters: smoke's, except gallery_groups (declared by 01, carried over by --only 02)
    from busi_study.params import load_profile

    params = {**load_profile("smoke", REPO / "params"), "data_source": "demo", "gallery_groups": 999}
    meta = json.loads((prev / "run.json").read_text())
    meta["params"] = params
    (prev / "run.json").write_text(json.dumps(meta))
    code = run_all_main(["--demo", "--profile", "smoke", "--only", "02", "--reports-dir", str(reports),
                         "--data-dir", str(tmp_path / "d"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ran with other parameters" in err and "gallery_groups 6 ≠ 999" in err


def test_the_outputs_of_rerun_notebooks_are_not_carried_over(tmp_path):
    """A model written by a notebook's earlier run must not survive into a run that reruns the notebook
    (it may no longer make that model); files of the carried notebooks are linked."""
    import os

    from busi_study.report.runner import _file_ids, carry_over, outputs_of, written_since

    prev = tmp_path / "prev"
    (prev / "results" / "old_model").mkdir(parents=True)
    (prev / "results" / "kept_model").mkdir(parents=True)
    snap = _file_ids(prev)
    (prev / "results" / "kept_model" / "metrics.json").write_text("{}")  # written by 02
    out02 = written_since(snap, prev)
    snap = _file_ids(prev)
    (prev / "results" / "old_model" / "metrics.json").write_text("{}")  # written by 05
    (prev / "tables").mkdir()
    (prev / "tables" / "comparison.csv").write_text("a")
    out05 = written_since(snap, prev)
    assert out02 == ["results/kept_model/metrics.json"]
    assert out05 == ["results/old_model/metrics.json", "tables/comparison.csv"]
    meta = {"notebooks": [{"name": "02_x", "outputs": out02}, {"name": "05_y", "outputs": out05}, {"name": "06_z"}]}
    stale, unknown = outputs_of(meta, {"05_y", "06_z"})
    assert stale == set(out05) and unknown == ["06_z"]  # 06 ran before outputs were recorded
    new = tmp_path / "new"
    new.mkdir()
    carry_over(prev, new, stale)
    assert (new / "results" / "kept_model" / "metrics.json").exists()
    assert os.path.samefile(new / "results" / "kept_model" / "metrics.json", prev / "results" / "kept_model" / "metrics.json")
    assert not (new / "results" / "old_model" / "metrics.json").exists() and not (new / "tables" / "comparison.csv").exists()
