import json

import pandas as pd

from busi_study.report.reference_results import check_against_reference, export_reference

from .test_evaluate_summary import test_summary_writes_comparison_roc_and_paired_differences as make_run


def _complete_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_run(run)  # results/, tables/comparison_models.csv, figures/
    (run / "tables" / "splits_per_fold.csv").write_text("seed,fold\n42,0\n")
    (run / "figures" / "big.png").write_bytes(b"png")
    meta = {"ok": True, "run_id": "r1", "command": "run_all.py --profile reference", "git": {"commit": "a" * 40, "dirty": False},
            "profile": "reference", "hardware": {"cpu": "cpu", "cpu_count": 2, "gpus": []}, "wall_s": 100.0,
            "notebooks": [{"name": "00_download", "wall_s": 30.0}]}
    (run / "run.json").write_text(json.dumps(meta))
    return run


def test_export_copies_numbers_only_and_updates_readme(tmp_path):
    run = _complete_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- reference-results:start -->\nPLACEHOLDER-XYZ\n<!-- reference-results:end -->\nend\n")
    ref = tmp_path / "reference"
    files = export_reference(run, ref, readme)
    names = {f.name for f in files}
    assert {"comparison_models.csv", "comparison_models.md", "splits_per_fold.csv", "run.json", "README.md",
            "good.json", "s3_head-resnet50.SKIPPED.json"} <= names
    assert not any(f.suffix in (".png", ".pdf", ".keras") for f in ref.rglob("*"))
    text = readme.read_text()
    assert "PLACEHOLDER-XYZ" not in text and "| good |" in text and text.startswith("intro") and text.endswith("end\n")


def test_check_against_reference(tmp_path):
    run = _complete_run(tmp_path)
    ref = tmp_path / "reference"
    export_reference(run, ref)
    same = check_against_reference(run, ref)
    assert len(same) and same["inside"].all()
    t = pd.read_csv(run / "tables" / "comparison_models.csv")
    t.loc[t["model"] == "good", "accuracy"] = 0.0
    t.to_csv(run / "tables" / "comparison_models.csv", index=False)
    moved = check_against_reference(run, ref).set_index(["model", "metric"])
    assert not moved.loc[("good", "accuracy"), "inside"] and moved.loc[("good", "macro_auc"), "inside"]


def test_readme_section_carries_calibration_and_pointing_game(tmp_path):
    run = _complete_run(tmp_path)
    pd.DataFrame([{"model": "good", "temperatures": "1.0", **{f"{m}_{w}{s}": v for m, v in (("ece", 0.1), ("log_loss", 0.5))
                                                              for w in ("before", "after") for s in ("", "_ci_low", "_ci_high")}}]
                 ).to_csv(run / "tables" / "calibration_summary.csv", index=False)
    rows = [{"model": "good", "subset": sub, "measure": m, "map": mp, "n": 10, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
            for sub in ("all lesions", "correctly classified lesions") for m in ("pointing_hit", "energy_inside", "iou")
            for mp, v in (("Grad-CAM (predicted class)", 0.8 if sub.startswith("correctly") else 0.2),
                          ("centred Gaussian baseline", 0.4))]
    pd.DataFrame(rows).to_csv(run / "tables" / "localisation_summary.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- reference-results:start -->\n<!-- reference-results:end -->\n")
    export_reference(run, tmp_path / "reference", readme)
    text = readme.read_text()
    assert "| good | 0.100 [0.100, 0.100] | 0.100 [0.100, 0.100] |" in text
    assert "| good | 10 | 0.800 [0.700, 0.900] | 0.400 [0.300, 0.500] |" in text  # correctly classified subset only


def test_ablation_export_goes_to_its_own_folder_and_survives_a_reference_export(tmp_path):
    import pytest

    from busi_study.report.reference_results import export_ablation

    run = _complete_run(tmp_path)
    ref = tmp_path / "reference"
    export_reference(run, ref)
    with pytest.raises(ValueError, match="no ablation tables"):
        export_ablation(run, ref)
    pd.DataFrame([{"enhancement": "clahe", "accuracy": 0.8, "seconds": 12.5}]).to_csv(
        run / "tables" / "s1_enhancement_ablation.csv", index=False)
    pd.DataFrame([{"seed": 42, "metric": "accuracy", "diff": 0.01, "lesion_aware_s": 3.0, "s0_s": 9.0}]).to_csv(
        run / "tables" / "s1_seed_comparison.csv", index=False)
    files = export_ablation(run, ref)
    assert {f.name for f in files} == {"s1_enhancement_ablation.csv", "s1_seed_comparison.csv", "run.json", "README.md"}
    assert "00_download 30 s" in (ref / "ablation" / "README.md").read_text()
    (run / "tables" / "s1_enhancement_ablation.csv").unlink()
    (run / "tables" / "s1_seed_comparison.csv").unlink()
    export_reference(run, ref)  # a later reference export keeps the ablation folder
    assert (ref / "ablation" / "s1_seed_comparison.csv").exists() and (ref / "comparison_models.csv").exists()
    assert not (tmp_path / ".reference-ablation-kept").exists()


def test_reference_readme_says_when_the_numbers_come_from_the_ablation_profile(tmp_path):
    run = _complete_run(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    export_reference(run, tmp_path / "ref")
    assert "enhancement ablation and seed repeats" not in (tmp_path / "ref" / "README.md").read_text()
    (run / "run.json").write_text(json.dumps({**meta, "profile": "ablation"}))
    export_reference(run, tmp_path / "ref")
    assert "reference profile plus notebook 05's enhancement ablation and seed repeats" in (tmp_path / "ref" / "README.md").read_text()


def test_cpu_features_read_from_cpuinfo(tmp_path):
    from busi_study import provenance

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n")
    assert provenance.cpu_features(info) == ["sse4_2", "avx", "avx2", "fma", "avx512f"]
    assert provenance.cpu_features(tmp_path / "missing") is None
    assert "cpu_features" in provenance.hardware()


def test_check_reference_names_a_cpu_with_other_vector_instructions(tmp_path, monkeypatch, capsys):
    from busi_study import cli
    from busi_study.report.reference_results import cpu_note

    avx2, avx512 = ["avx", "avx2"], ["avx", "avx2", "avx512f"]
    assert cpu_note({"cpu_features": avx2}, {"cpu_features": avx2}) is None
    assert "differ from the reference run's (avx, avx2, avx512f)" in cpu_note({"cpu_features": avx2}, {"cpu_features": avx512})
    assert "cannot be compared" in cpu_note({"cpu_features": avx2}, {"cpu": "AMD EPYC"})  # older reference: not recorded
    # the CLI prints it under the table
    run = _complete_run(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "hardware": {**meta["hardware"], "cpu_features": avx2}}))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "latest").symlink_to(run)
    repo = tmp_path / "repo"
    export_reference(run, repo / "reports" / "reference")
    ref_meta = repo / "reports" / "reference" / "run.json"
    ref_meta.write_text(json.dumps({**meta, "hardware": {**meta["hardware"], "cpu_features": avx512}}))
    monkeypatch.setattr(cli, "REPO", repo)
    assert cli.check_reference_main(reports) == 0
    out = capsys.readouterr().out
    assert "values inside the reference 95 % CIs" in out and "note: this run's CPU vector instructions (avx, avx2) differ" in out
    ref_meta.write_text(json.dumps({**meta, "hardware": {**meta["hardware"], "cpu_features": avx2}}))
    assert cli.check_reference_main(reports) == 0
    assert "note:" not in capsys.readouterr().out
