"""Bad inputs, as a new user would try them (issue 12).

Each case asserts: the one-line message (``error: what is wrong — what to do``, nothing after
it, no traceback), exit code 2, and that nothing the user had (data, reports, an earlier
output file) changed. Everything runs in-process on small crafted data; where the runner is
involved, papermill is replaced by a stand-in so no kernel starts. The kinds covered are listed
in ``KINDS`` at the bottom (and checked to be at least 25).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busi_study.cli import main, run_all_main
from busi_study.data.consistency import open_run_data
from busi_study.data.images import read_gray, read_rgb
from busi_study.data.manifest import scan_dataset
from busi_study.data.prepare import prepare_data as _prepare_data
from busi_study.errors import ProvenanceError, StudyError
from busi_study.report import runner


# ---------------------------------------------------------------- helpers
def prepare_data(source: str, data_dir: Path, progress: bool = False, **data_overrides):
    """The data path with the default profile's parameters, on ``source``."""
    import dataclasses

    from busi_study.cli import REPO
    from busi_study.params import StudyParams

    p = StudyParams.from_profile("default", REPO / "params", {"data_source": source})
    return _prepare_data(dataclasses.replace(p.data, **data_overrides), p.splits, p.seed, data_dir, progress=progress)


def digest(*roots: Path) -> dict[str, str]:
    """path -> sha256 (or link target) of every file below ``roots``: 'nothing changed' checks."""
    out = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            if p.is_symlink():
                out[str(p)] = "-> " + str(p.readlink())
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_line(err: str, *fragments: str) -> str:
    """Exactly one ``error:`` line, it is the last line, no traceback; return it."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    assert lines[-1] == errors[0], err[-2000:]
    assert "Traceback" not in err
    assert " — " in errors[0], f"no 'what to do' part: {errors[0]}"
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def cli(capsys, argv, *fragments, entry=main) -> str:
    code = entry(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    return assert_one_line(err, *fragments)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def demo_copy(demo_root, tmp_path) -> Path:
    dst = tmp_path / "src" / "Dataset_BUSI_with_GT"
    shutil.copytree(demo_root, dst)
    return dst


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, request):
    """One real data path on the demo phantoms (module-wide: ~5 s)."""
    from busi_study.data.demo import make_demo_dataset

    base = tmp_path_factory.mktemp("prepared")
    root = make_demo_dataset(base / "demo_src", seed=0)
    data = prepare_data(str(root), base / "data", progress=False)
    return base, root, data


# ---------------------------------------------------------------- data source (check-data)
def test_missing_path(capsys, tmp_path):
    cli(capsys, ["check-data", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d")], "data path not found")


def test_plain_file_instead_of_folder(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    before = digest(tmp_path)
    cli(capsys, ["check-data", str(f), "--data-dir", str(tmp_path / "d")], "folder or a .zip")
    assert digest(tmp_path) == before


def test_not_a_zip(capsys, tmp_path):
    z = tmp_path / "busi.zip"
    z.write_text("not a zip")
    cli(capsys, ["check-data", str(z), "--data-dir", str(tmp_path / "d")], "not a readable zip")


def test_zip_with_a_corrupt_member(capsys, demo_root, tmp_path):
    z = tmp_path / "busi.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(demo_root.rglob("*.png")):
            zf.write(f, f"Dataset_BUSI_with_GT/{f.relative_to(demo_root)}")
        info = zf.infolist()[3]
    data = bytearray(z.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 20  # inside the compressed bytes of one member
    data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])
    z.write_bytes(bytes(data))
    before = digest(z)
    cli(capsys, ["check-data", str(z), "--data-dir", str(tmp_path / "d")], "not a readable zip", "damaged")
    assert digest(z) == before
    assert not list((tmp_path / "d" / "raw").glob("*"))  # no half-unpacked folder left behind


def test_folder_without_class_folders(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    cli(capsys, ["check-data", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d")], "no normal/ benign/ malignant/")


def test_missing_class_folder(capsys, demo_copy, tmp_path):
    shutil.rmtree(demo_copy / "malignant")
    before = digest(demo_copy)
    cli(capsys, ["check-data", str(demo_copy), "--data-dir", str(tmp_path / "d")], "no malignant/ folder", "all three classes")
    assert digest(demo_copy) == before


def test_class_without_a_usable_image(capsys, demo_copy, tmp_path):
    for f in (demo_copy / "normal").glob("*.png"):
        f.write_bytes(b"")
    cli(capsys, ["check-data", str(demo_copy), "--data-dir", str(tmp_path / "d")], "no usable normal image")


def test_dataset_too_small_to_split(capsys, demo_copy, tmp_path):
    for c in ("normal", "benign", "malignant"):
        for f in sorted((demo_copy / c).glob("*.png"))[6:]:
            f.unlink()
    cli(capsys, ["check-data", str(demo_copy), "--data-dir", str(tmp_path / "d")], "too few images to split", "n_splits")


# ---------------------------------------------------------------- files: decoding and naming
def test_16bit_png_is_scaled_not_clipped(tmp_path, demo_copy):
    ramp = np.linspace(0, 4095, 64 * 80).reshape(64, 80).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    path = tmp_path / "x16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    g = read_gray(path)
    assert g.min() == 0 and g.max() == 255
    assert abs(g.mean() / 255 - 0.5) < 0.01  # PIL's convert("L") gives 0.97 (clipped to white)
    assert (read_rgb(path)[..., 0] == g).all()
    # in the data check: kept, listed as scaled, and its pixels are the scaled ones
    target = demo_copy / "benign" / "benign (1).png"
    w, h = Image.open(target).size
    Image.fromarray(np.linspace(0, 4095, w * h).reshape(h, w).astype(np.uint16)).save(target)
    scan = scan_dataset(demo_copy, progress=False)
    assert "benign/benign (1).png" in set(scan.manifest["path"])
    note = scan.issues[scan.issues["path"] == "benign/benign (1).png"]
    assert len(note) == 1 and "scaled" in note["problem"].iloc[0] and note["action"].iloc[0].startswith("kept")
    assert abs(read_gray(target).mean() / 255 - 0.5) < 0.01


def test_float_tiff_is_scaled_from_its_range(tmp_path):
    arr = np.linspace(-1.0, 3.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    arr[0, 0] = np.nan
    path = tmp_path / "xf.tif"
    Image.fromarray(arr).save(path)
    g = read_gray(path)
    assert g[0, 1] == 0 and g.max() == 255 and g[0, 0] == 0
    unit = tmp_path / "unit.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(unit)
    assert (read_gray(unit) == 128).all()  # values in [0, 1] are scaled by 255, not stretched


def test_same_stem_files_are_both_left_out_and_listed(capsys, demo_copy, tmp_path):
    png = demo_copy / "benign" / "benign (2).png"
    n_before = len(scan_dataset(demo_copy, progress=False).manifest)
    Image.open(png).save(png.with_suffix(".tif"))
    scan = scan_dataset(demo_copy, progress=False)
    assert not scan.manifest["path"].str.startswith("benign/benign (2).").any()
    listed = scan.issues[scan.issues["problem"].str.startswith("same name as")]
    assert set(listed["path"]) == {"benign/benign (2).png", "benign/benign (2).tif"}
    assert len(scan.manifest) == n_before - 1
    masks = scan.issues[scan.issues["path"].str.startswith("benign/benign (2)_mask")]
    assert len(masks) and (masks["action"] == "mask ignored").all()
    # shown in the data check on the console
    assert main(["check-data", str(demo_copy), "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "benign/benign (2).tif: same name as benign (2).png" in out


# ---------------------------------------------------------------- parameters (run_all.py)
@pytest.mark.parametrize("argv, fragment", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--set", "bogus=1", "--list"], "unknown parameter 'bogus'"),
    (["--set", "n_splits=five", "--list"], "must be a number"),
    (["--set", "n_splits", "--list"], "key=value"),
    (["--only", "99", "--list"], "no notebook matches 99"),
    (["--data", "/no/such/folder"], "no such file or folder"),
])
def test_run_all_parameter_errors(capsys, tmp_path, argv, fragment):
    cli(capsys, [*argv, "--reports-dir", str(tmp_path / "r")], fragment, entry=run_all_main)


def test_broken_profile_file(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("seed: [1,\n")
    before = digest(bad)
    cli(capsys, ["--profile", str(bad), "--list"], "cannot parse", entry=run_all_main)
    assert digest(bad) == before


# ---------------------------------------------------------------- predict
def test_predict_model_missing(capsys, tmp_path, demo_root):
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tmp_path / "m.keras")], "model file not found")


def test_predict_corrupt_model(capsys, tmp_path, demo_root):
    m = tmp_path / "m.keras"
    m.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    before = digest(tmp_path)
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(m)], "cannot load the model", "corrupt")
    assert digest(tmp_path) == before


def test_predict_not_a_keras_file(capsys, tmp_path, demo_root):
    m = tmp_path / "weights.h5"
    m.write_bytes(b"\x89HDF\r\n")
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(m)], "not a .keras model file")


def test_predict_model_of_another_task(capsys, tmp_path, demo_root):
    keras = pytest.importorskip("keras")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inp)))
    m = tmp_path / "two_class.keras"
    model.save(m)
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(m)], "not a 3-class image classifier")


def test_predict_out_in_a_missing_folder(capsys, tmp_path, demo_root):
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tmp_path / "m.keras"),
                 "--out", str(tmp_path / "no" / "such" / "p.csv")], "does not exist")
    assert not (tmp_path / "no").exists()


def test_predict_out_is_a_folder(capsys, tmp_path, demo_root):
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path)],
        "is a folder")


def test_predict_out_in_a_read_only_folder(capsys, monkeypatch, tmp_path, demo_root):
    import busi_study.predict as pr

    monkeypatch.setattr(pr.os, "access", lambda path, mode: Path(path) != tmp_path)  # as on a read-only mount
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "p.csv")],
        "not writable")
    assert not (tmp_path / "p.csv").exists()


def test_predict_no_images(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    cli(capsys, ["predict", str(tmp_path / "empty"), "--model", str(tmp_path / "m.keras")], "no image files found")


def _fake_models(monkeypatch):
    import busi_study.predict as pr

    monkeypatch.setattr(pr, "load_model", lambda path: (object(), {}))
    monkeypatch.setattr(pr, "predict_ensemble", lambda models, files, **kw: pd.DataFrame(
        {"path": [str(f) for f in files], "p_normal": 0.2, "p_benign": 0.3, "p_malignant": 0.5,
         "predicted": "malignant", "error": ""}))


@pytest.mark.parametrize("code, fragment", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                            (errno.EACCES, "permission denied")])
def test_predict_full_disk_or_read_only_out(capsys, monkeypatch, tmp_path, demo_root, code, fragment):
    _fake_models(monkeypatch)
    out = tmp_path / "preds.csv"
    out.write_text("the user's earlier predictions\n")
    before = digest(tmp_path)

    def full(self, path, *a, **k):  # the disk fills up half-way through the write
        Path(path).write_text("path,p_norm")
        raise OSError(code, "simulated", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tmp_path / "m.keras"), "--out", str(out)], fragment)
    assert digest(tmp_path) == before  # the earlier file intact, no temporary file left


# ---------------------------------------------------------------- file system: reports and data folders
def test_reports_folder_read_only(capsys, monkeypatch, tmp_path):
    reports = tmp_path / "reports"
    real_mkdir = Path.mkdir

    def ro_mkdir(self, *a, **k):
        if str(self).startswith(str(reports)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    cli(capsys, ["--demo", "--only", "00", "--reports-dir", str(reports), "--data-dir", str(tmp_path / "d")],
        "read-only", str(reports), entry=run_all_main)
    assert not reports.exists()


def test_reports_folder_full_while_starting_a_run(capsys, monkeypatch, tmp_path, fake_papermill):
    reports = tmp_path / "reports"
    reports.mkdir()
    real = Path.write_text

    def full(self, *a, **k):
        if self.parent.parent == reports:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    cli(capsys, ["--demo", "--reports-dir", str(reports), "--data-dir", str(tmp_path / "d")], "no space left",
        entry=run_all_main)
    assert not (reports / "latest").exists()


def test_data_folder_full_during_check_data_keeps_the_earlier_data(capsys, monkeypatch, prepared):
    base, root, data = prepared
    before = digest(data.store.folder)
    import busi_study.data.manifest as mf

    real = Path.write_bytes

    def full(self, blob):
        if self.name.startswith("splits"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, blob)

    monkeypatch.setattr(mf.Path, "write_bytes", full)
    cli(capsys, ["check-data", str(root), "--data-dir", str(base / "data")], "no space left")
    assert digest(data.store.folder) == before  # staged elsewhere: the published folder is untouched


def test_programming_errors_keep_their_traceback(monkeypatch, tmp_path):
    import busi_study.data.prepare as prep

    def bug(*a, **k):
        return 1 / 0

    monkeypatch.setattr(prep, "prepare_data", bug)
    with pytest.raises(ZeroDivisionError):
        main(["check-data", str(tmp_path), "--data-dir", str(tmp_path / "d")])


def test_study_error_is_always_one_line():
    assert str(StudyError("a\nb  c")) == "a b c"


# ---------------------------------------------------------------- runner: complete, interrupted, carried, cleaned
@pytest.fixture()
def fake_papermill(monkeypatch):
    """papermill.execute_notebook replaced: copies the notebook, or does what ``plan`` says."""
    import papermill as pm

    plan: dict[str, object] = {}

    def execute(src, out, parameters=None, **kw):
        stem = Path(src).stem
        action = plan.get(stem)
        if isinstance(action, BaseException):
            raise action
        shutil.copy(src, out)
        if callable(action):
            action(Path(parameters["report_dir"]))

    monkeypatch.setattr(pm, "execute_notebook", execute)
    monkeypatch.setattr(runner, "render_html", lambda executed, html, demo: html.parent.mkdir(parents=True, exist_ok=True)
                        or html.write_text("<html></html>"))
    return plan


def _run(tmp_path, *args) -> int:
    return run_all_main(["--demo", "--profile", "smoke", "--no-progress", "--reports-dir", str(tmp_path / "reports"),
                         "--data-dir", str(tmp_path / "data"), *args])


def _write_table(report_dir: Path, name="t", value=1.0):
    from busi_study.report.export import save_table

    save_table(pd.DataFrame({"x": [value]}), name, report_dir)


def test_interrupted_run_is_never_built_on(tmp_path, fake_papermill, capsys):
    fake_papermill["01_eda_intensity"] = _write_table
    assert _run(tmp_path) == 0
    good = (tmp_path / "reports" / "latest").resolve()
    assert runner.is_complete(good)
    fake_papermill["01_eda_intensity"] = KeyboardInterrupt()
    assert _run(tmp_path, "--only", "01") == 130
    runs = sorted(p for p in (tmp_path / "reports").iterdir() if p.name != "latest")
    bad = runs[-1]
    assert bad != good and not runner.is_complete(bad) and not (bad / "COMPLETE.json").exists()
    assert json.loads((bad / "run.json").read_text())["interrupted"] is True
    assert (tmp_path / "reports" / "latest").resolve() == good
    capsys.readouterr()
    fake_papermill.pop("01_eda_intensity")
    assert _run(tmp_path, "--only", "02") == 0
    out = capsys.readouterr().out
    assert f"Building on complete run {good.name}:" in out
    newest = (tmp_path / "reports" / "latest").resolve()
    assert json.loads((newest / "run.json").read_text())["partial_of"] == good.name
    assert f"1 failed or incomplete run(s) kept in {tmp_path / 'reports'}: {bad.name} " in out


def test_only_run_links_instead_of_copying_and_leaves_the_earlier_run_unchanged(tmp_path, fake_papermill):
    fake_papermill["01_eda_intensity"] = _write_table
    assert _run(tmp_path) == 0
    good = (tmp_path / "reports" / "latest").resolve()
    (good / "results" / "m").mkdir(parents=True)
    (good / "results" / "m" / "fold0.keras").write_bytes(b"\0" * 100_000)
    before = digest(good)
    fake_papermill["01_eda_intensity"] = lambda d: _write_table(d, value=2.0)  # rewrites a carried file
    assert _run(tmp_path, "--only", "01") == 0
    new = (tmp_path / "reports" / "latest").resolve()
    assert new != good and digest(good) == before
    assert (new / "results" / "m" / "fold0.keras").stat().st_ino == (good / "results" / "m" / "fold0.keras").stat().st_ino
    assert pd.read_csv(new / "tables" / "t.csv")["x"].iloc[0] == 2.0
    assert not (new / "COMPLETE.json").samefile(good / "COMPLETE.json")


def test_clean_failed_removes_failed_and_interrupted_runs_only(tmp_path, fake_papermill, capsys):
    assert _run(tmp_path) == 0
    good = (tmp_path / "reports" / "latest").resolve()
    ref = tmp_path / "reports" / "reference"
    ref.mkdir()
    (ref / "comparison_models.csv").write_text("model\n")
    legacy = tmp_path / "reports" / "20250101T000000Z-smoke-demo"  # finished by the runner before markers existed
    legacy.mkdir()
    (legacy / "run.json").write_text(json.dumps({"ok": True, "started_utc": "2025-01-01"}))
    old_interrupted = tmp_path / "reports" / "20250102T000000Z-smoke-demo"  # old runner, Ctrl-C: RUNNING left behind
    old_interrupted.mkdir()
    (old_interrupted / "run.json").write_text(json.dumps({"ok": True, "started_utc": "2025-01-02"}))
    (old_interrupted / "RUNNING").write_text("started 2025-01-02\n")
    fake_papermill["00_download"] = KeyboardInterrupt()
    assert _run(tmp_path) == 130
    fake_papermill["00_download"] = RuntimeError("boom")
    assert _run(tmp_path) == 1
    assert len(runner.failed_runs(tmp_path / "reports")) == 3
    before = digest(good, ref, legacy)
    assert _run(tmp_path, "--clean-failed") == 0
    out = capsys.readouterr().out
    assert "3 failed or incomplete run(s) removed" in out and not old_interrupted.exists()
    assert runner.failed_runs(tmp_path / "reports") == []
    assert digest(good, ref, legacy) == before and (tmp_path / "reports" / "latest").resolve() == good


def test_console_shows_the_data_check(tmp_path, fake_papermill, capsys, prepared):
    _, _, data = prepared
    summary = {**data.summary, "warnings": ["unexpected counts: normal: 12 images, BUSI has 133"]}

    def download(report_dir):
        (report_dir / "data_summary.json").write_text(json.dumps(summary))

    fake_papermill["00_download"] = download
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    n = len(runner.discover_notebooks(Path(runner.__file__).resolve().parents[3] / "notebooks"))
    after_00 = out[out.index(f"[1/{n}] 00_download"):out.index(f"[2/{n}]")]
    assert "data: 46 images" in after_00 and "WARNING: unexpected counts" in after_00
    assert out.rstrip().splitlines()[-2].startswith("WARNING: unexpected counts")  # again at the end of the run


# ---------------------------------------------------------------- provenance: data and splits of this run
def _report_with(tmp_path: Path, summary: dict) -> Path:
    rep = tmp_path / "report"
    rep.mkdir(exist_ok=True)
    (rep / "data_summary.json").write_text(json.dumps(summary))
    return rep


def test_report_without_data(tmp_path):
    with pytest.raises(ProvenanceError, match="run notebooks/00_download first"):
        open_run_data(tmp_path)


def test_two_datasets_never_share_a_processed_folder(prepared, tmp_path):
    base, root, data_a = prepared
    other = tmp_path / "b" / "Dataset_BUSI_with_GT"
    shutil.copytree(root, other)
    (other / "benign" / "benign (3).png").unlink()
    data_b = prepare_data(str(other), base / "data", progress=False)
    assert data_b.store.folder != data_a.store.folder
    rep = _report_with(tmp_path, data_a.summary)
    store = open_run_data(rep)  # dataset A's report still reads dataset A
    assert store.folder == data_a.store.folder and len(store.read("manifest")) == data_a.summary["n_images"]
    regrouped = prepare_data(str(root), base / "data", phash_threshold=4, progress=False)
    assert regrouped.store.folder != data_a.store.folder  # other grouping parameters: another folder


def test_changed_splits_are_a_one_line_error_naming_both(prepared, tmp_path):
    _, _, data = prepared
    rep = _report_with(tmp_path, {**data.summary, "splits_sha256": "f" * 64})
    with pytest.raises(ProvenanceError, match=r"splits ffffffffffff.*--from 00") as e:
        open_run_data(rep)
    assert data.summary["splits_sha256"][:12] in str(e.value) and "\n" not in str(e.value)


def test_carried_results_of_other_splits_are_refused(prepared, tmp_path):
    _, _, data = prepared
    rep = _report_with(tmp_path, data.summary)
    res = rep / "results" / "s2_cnn"
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps({"data_manifest_sha256": data.summary["manifest_sha256"],
                                                  "data_splits_sha256": "0" * 64}))
    with pytest.raises(ProvenanceError, match=r"results/s2_cnn were made from .* splits 000000000000 .* --from 02"):
        open_run_data(rep)
    (res / "metrics.json").write_text(json.dumps({"data_manifest_sha256": data.summary["manifest_sha256"],
                                                  "data_splits_sha256": data.summary["splits_sha256"]}))
    assert open_run_data(rep).folder == data.store.folder


def test_runner_refuses_a_report_mixing_data(tmp_path, fake_papermill, capsys, prepared, monkeypatch):
    """--only 00 with new split parameters next to carried model results: the run fails, latest stays."""
    _, _, data = prepared

    def download(report_dir):
        (report_dir / "data_summary.json").write_text(json.dumps(data.summary))

    def model(report_dir):
        res = report_dir / "results" / "s2_cnn"
        res.mkdir(parents=True, exist_ok=True)
        (res / "metrics.json").write_text(json.dumps({"data_manifest_sha256": data.summary["manifest_sha256"],
                                                      "data_splits_sha256": "1" * 64}))

    fake_papermill["00_download"] = download
    fake_papermill["02_baseline_cnn"] = model
    monkeypatch.setattr(runner, "_model_summary", lambda *a, **k: None)
    assert _run(tmp_path) == 1
    err = capsys.readouterr().err
    assert "ProvenanceError: results/s2_cnn were made from" in err
    assert not (tmp_path / "reports" / "latest").exists()


# ================================================================ issue: no wrong number, no silent mixing
# ---------------------------------------------------------------- 0. probabilities: the columns the model has
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A binary (one sigmoid unit: p_malignant, as the S4-style model) and a three-class Keras model, 16 px."""
    keras = pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255.0)(inp)))
    keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x), name="s4_like").save(d / "binary.keras")
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x), name="three").save(d / "three.keras")
    return d


def _label_table(root: Path, path: Path, image=lambda f: f.name, extra=None) -> Path:
    """A label table of every image below ``root`` (columns Image_filename, Classification)."""
    rows = [{"Image_filename": image(f), "Classification": c, **(extra or {})}
            for c in ("normal", "benign", "malignant") for f in sorted((root / c).glob("*.png")) if "_mask" not in f.name]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _evaluate(demo_root, tmp_path, model: Path, *extra: str, labels: Path | None = None) -> int:
    labels = labels or _label_table(demo_root, tmp_path / "labels.csv")
    return main(["evaluate", str(demo_root), "--labels", str(labels), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--resamples", "50", *extra])


@pytest.mark.parametrize("model", ["binary", "three"])
def test_evaluate_scores_the_written_predictions_as_scikit_learn_does(capsys, tmp_path, demo_root, tiny_models, model):
    from sklearn.metrics import log_loss, roc_auc_score

    assert _evaluate(demo_root, tmp_path, tiny_models / f"{model}.keras") == 0
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    task = pred[pred["in_task"]]
    got = {r["metric"]: r for r in json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]}
    y = (task["label"] == "malignant").to_numpy()
    assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, task["p_malignant"]), abs=1e-9)
    ratio = task["p_malignant"] / (task["p_benign"] + task["p_malignant"])
    if model == "binary":  # no p_normal: the task is the classes the model has, benign vs malignant
        assert pred["p_normal"].isna().all() and set(task["label"]) == {"benign", "malignant"}
        assert got["log_loss"]["value"] == pytest.approx(log_loss(y, task["p_malignant"]), rel=1e-6)
    else:
        p = task[["p_normal", "p_benign", "p_malignant"]].to_numpy()
        assert got["log_loss"]["value"] == pytest.approx(
            log_loss(task["label"].map({"normal": 0, "benign": 1, "malignant": 2}), p / p.sum(1, keepdims=True),
                     labels=[0, 1, 2]), rel=1e-6)
        ratio = ratio.where(task["label"] != "normal", task["p_malignant"] / (task["p_normal"] + task["p_benign"]
                                                                           + task["p_malignant"]))
    if model == "binary" or set(task["label"]) <= {"benign", "malignant"}:
        assert got["auc_ratio_score"]["value"] == pytest.approx(roc_auc_score(y, ratio), abs=1e-9)
    for m in ("auc_ratio_score", "log_loss", "log_loss_T", "ece", "ece_T"):
        assert np.isfinite(got[m]["value"]) and np.isfinite(got[m]["ci_low"]), (m, got[m])


@pytest.mark.parametrize("argv, fragment", [(["--negative", "normal", "benign"], "no p_normal"),
                                            (["--positive", "normal", "--negative", "benign"], "no p_normal")])
def test_evaluate_a_binary_model_on_a_class_it_does_not_have(capsys, tmp_path, demo_root, tiny_models, argv, fragment):
    labels = _label_table(demo_root, tmp_path / "labels.csv")
    cli(capsys, ["evaluate", str(demo_root), "--labels", str(labels), "--model", str(tiny_models / "binary.keras"),
                 "--out", str(tmp_path / "out"), *argv], fragment, "benign", "malignant")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_probability_tables_with_an_empty_class_column():
    """Normalising, temperature scaling and scoring use the classes a table has (p_normal empty: a binary model)."""
    from busi_study.evaluation.evaluate import arrays
    from busi_study.evaluation.external import binary_table, settings_from_validation

    rng = np.random.default_rng(0)
    pm = rng.random(40)
    labels = np.where(rng.random(40) < 0.5, "malignant", "benign")
    labels[:2] = ["malignant", "benign"]
    t = pd.DataFrame({"label": labels, "group_id": np.arange(40).astype(str), "fold": 0,
                      "p_normal": np.nan, "p_benign": 1 - pm, "p_malignant": pm})
    y, p, _ = arrays(t)
    assert np.isfinite(p).all() and (p[:, 0] == 0).all() and np.allclose(p[:, 2], pm)
    s = settings_from_validation(t)
    assert np.isfinite(s.temperature) and 0.05 < s.temperature < 20
    table = binary_table(y, p, t["group_id"].to_numpy(), 3.0, s.thresholds, n_resamples=20).set_index("metric")
    assert np.isfinite(table["value"]).all()
    from sklearn.metrics import roc_auc_score

    assert table.loc["auc", "value"] == pytest.approx(roc_auc_score(labels == "malignant", pm))
    assert table.loc["auc_ratio_score", "value"] == pytest.approx(table.loc["auc", "value"])
    # a class column empty in some rows only: not a model's table; refused, not scored
    t.loc[3, "p_benign"] = np.nan
    with pytest.raises(StudyError, match="p_benign"):
        arrays(t)


def test_fold_ensemble_mixing_a_binary_and_a_three_class_model(capsys, demo_root, tiny_models):
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(tiny_models / "binary.keras"),
                 str(tiny_models / "three.keras")], "same classes", "binary")


def test_app_refuses_a_binary_model(tiny_models, tmp_path):
    from busi_study.app import engine

    model = tmp_path / "models" / "s4.keras"
    model.parent.mkdir()
    shutil.copy(tiny_models / "binary.keras", model)
    model.with_suffix(".json").write_text(json.dumps({"model": "s4", "classes": ["benign", "malignant"]}))
    shutil.copy(tiny_models / "three.keras", model.with_name("three.keras"))
    (tmp_path / "latest").symlink_to(tmp_path, target_is_directory=True)
    assert [e.name for e in engine.find_models(tmp_path)] == ["three"]
    with pytest.raises(StudyError, match="binary"):
        engine.load(engine.entry_for(model))


# ---------------------------------------------------------------- 1. masks and the external set in the data key
def test_same_images_with_other_masks_never_share_processed_data(prepared, tmp_path):
    from busi_study.data.arrays import load_mask_array

    base, root, data_a = prepared
    other = tmp_path / "b" / "Dataset_BUSI_with_GT"
    shutil.copytree(root, other)
    mask = other / "benign" / "benign (3)_mask.png"
    arr = np.asarray(Image.open(mask))
    _png(mask, (255 - arr).astype(np.uint8))  # same images, another lesion outline
    data_b = prepare_data(str(other), base / "data", progress=False)
    assert data_b.summary["manifest_sha256"] == data_a.summary["manifest_sha256"]  # the images are the same
    assert data_b.store.folder != data_a.store.folder
    store = open_run_data(_report_with(tmp_path, data_a.summary))  # a later --only run of the first folder
    assert store.folder == data_a.store.folder and store.raw_root() == root.resolve()
    a, b = load_mask_array(store, 32, progress=False), load_mask_array(data_b.store, 32, progress=False)
    assert a.shape == b.shape and not np.array_equal(a, b)  # the cache is not shared either
    assert np.array_equal(load_mask_array(store, 32, progress=False), a)


def test_masks_changed_after_00_are_refused(demo_copy, tmp_path):
    data = prepare_data(str(demo_copy), tmp_path / "data", progress=False)
    rep = _report_with(tmp_path, data.summary)
    assert open_run_data(rep).folder == data.store.folder
    mask = demo_copy / "malignant" / "malignant (2)_mask.png"
    _png(mask, np.zeros_like(np.asarray(Image.open(mask))))
    with pytest.raises(ProvenanceError, match=r"malignant \(2\)_mask\.png.*--from 00") as e:
        open_run_data(rep)
    assert "\n" not in str(e.value)


def test_changed_external_set_is_not_carried_over(tmp_path, fake_papermill, capsys):
    from busi_study.data.breast import scan_external
    from busi_study.data.breast_demo import make_demo_external

    ext = make_demo_external(tmp_path / "ext")

    def external(report_dir):  # what notebook 08 records
        (report_dir / "external_summary.json").write_text(json.dumps({"data": scan_external(ext, progress=False).summary}))

    fake_papermill["08_external_validation"] = external
    assert _run(tmp_path, "--external", str(ext)) == 0
    fake_papermill.pop("08_external_validation")
    assert _run(tmp_path, "--only", "02", "--external", str(ext)) == 0  # unchanged: carried over
    capsys.readouterr()
    mask = next(ext.glob("case*_tumor.png"))
    _png(mask, np.zeros_like(np.asarray(Image.open(mask))))
    before = digest(tmp_path / "reports")
    cli(capsys, ["--demo", "--profile", "smoke", "--no-progress", "--reports-dir", str(tmp_path / "reports"),
                 "--data-dir", str(tmp_path / "data"), "--only", "02", "--external", str(ext)],
        "changed", "08", entry=run_all_main)
    assert digest(tmp_path / "reports") == before


# ---------------------------------------------------------------- 2. evaluate on real label tables
def _write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("variant", ["extra_fields", "latin1", "bom_semicolon", "tab", "utf16"])
def test_evaluate_reads_real_label_tables(tmp_path, variant):
    from busi_study.studies.folder_evaluation import read_label_table, resolve_rows

    root = tmp_path / "imgs"
    for name in ("a.png", "b.png", "é.png", "d.png"):
        _png(root / name, np.full((8, 8), 90, np.uint8))
    lines = [["Image_filename", "Classification", "note"], ["a.png", "benign", "x"], ["b.png", "malignant", "y"],
             ["é.png", "Malignant", "café"], ["d.png", "benign", ""]]
    sep, enc = {"bom_semicolon": (";", "utf-8-sig"), "latin1": (",", "latin-1"), "tab": ("\t", "utf-8"),
                "utf16": ("\t", "utf-16")}.get(variant, (",", "utf-8"))  # utf-16: Excel's "Unicode text" export
    text = "\n".join(sep.join(r) for r in lines) + "\n"
    if variant == "extra_fields":  # a comma inside an unquoted field
        text = text.replace("b.png,malignant,y", "b.png,malignant,y, with a comma")
    table = read_label_table(_write(tmp_path / "labels.csv", text, enc))
    folder = resolve_rows(table, root, "Image_filename", "Classification")
    if variant == "extra_fields":
        assert list(folder.rows["image"]) == ["a.png", "é.png", "d.png"]
        assert len(folder.bad) == 1 and "line 3" in folder.bad["reason"].iloc[0] and "4 fields" in folder.bad["reason"].iloc[0]
    else:
        assert list(folder.rows["image"]) == ["a.png", "b.png", "é.png", "d.png"] and folder.bad.empty
        assert folder.rows.loc[2, "note"] == "café"


@pytest.mark.parametrize("variant, fragment", [("empty", "is empty"), ("corrupt_xlsx", "not a readable Excel workbook"),
                                               ("binary", "not a text table"), ("folder", "is a folder")])
def test_evaluate_unreadable_label_table(capsys, tmp_path, demo_root, variant, fragment):
    labels = tmp_path / ("labels.xlsx" if variant == "corrupt_xlsx" else "labels.csv")
    if variant == "empty":
        labels.write_text("\n  \n")
    elif variant == "corrupt_xlsx":
        labels.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    elif variant == "binary":
        labels.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    else:
        labels.mkdir()
    cli(capsys, ["evaluate", str(demo_root), "--labels", str(labels), "--model", str(tmp_path / "m.keras"),
                 "--out", str(tmp_path / "out")], fragment)


def test_evaluate_scores_an_image_listed_twice_once(capsys, tmp_path, demo_root, tiny_models):
    labels = _label_table(demo_root, tmp_path / "labels.csv")
    t = pd.read_csv(labels)
    twice = t[t["Image_filename"].isin(["benign (1).png", "malignant (1).png"])].copy()
    twice.loc[twice["Image_filename"] == "malignant (1).png", "Classification"] = "benign"  # two labels for one image
    pd.concat([t, twice]).to_csv(labels, index=False)
    assert _evaluate(demo_root, tmp_path, tiny_models / "three.keras", labels=labels) == 0
    err = capsys.readouterr().err
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv")
    bad = pd.read_csv(tmp_path / "out" / "bad_rows.csv")
    assert (pred["image"] == "benign (1).png").sum() == 1 and not (pred["image"] == "malignant (1).png").any()
    assert bad["reason"].str.contains("listed again").sum() == 1
    assert bad["reason"].str.contains("two labels").sum() == 2
    assert "listed more than once" in err


def test_evaluate_out_that_is_a_file_fails_before_predicting(capsys, monkeypatch, tmp_path, demo_root, tiny_models):
    import busi_study.predict as pr

    monkeypatch.setattr(pr, "predict_files", lambda *a, **k: pytest.fail("predicted before checking --out"))
    out = tmp_path / "out"
    out.write_text("the user's file\n")
    labels = _label_table(demo_root, tmp_path / "labels.csv")
    cli(capsys, ["evaluate", str(demo_root), "--labels", str(labels), "--model", str(tiny_models / "three.keras"),
                 "--out", str(out)], "is a file")
    assert out.read_text() == "the user's file\n"


@pytest.mark.parametrize("argv, fragment", [(["--resamples", "0"], "--resamples"), (["--temperature", "0"], "--temperature"),
                                            (["--temperature", "nan"], "--temperature"), (["--seed", "-1"], "--seed")])
def test_evaluate_bad_numbers(capsys, tmp_path, demo_root, argv, fragment):
    labels = _label_table(demo_root, tmp_path / "labels.csv")
    cli(capsys, ["evaluate", str(demo_root), "--labels", str(labels), "--model", str(tmp_path / "m.keras"),
                 "--out", str(tmp_path / "out"), *argv], fragment)


def test_evaluate_matches_names_without_their_extension(tmp_path, demo_root):
    from busi_study.studies.folder_evaluation import read_label_table, resolve_rows

    labels = _label_table(demo_root, tmp_path / "labels.csv", image=lambda f: f.stem)
    folder = resolve_rows(read_label_table(labels), demo_root, "Image_filename", "Classification")
    assert folder.bad.empty and len(folder.rows) == len(pd.read_csv(labels))
    assert all(Path(p).stem == i for p, i in zip(folder.rows["path"], folder.rows["image"]))
    # the same stem twice (x.png and x.jpg): ambiguous, listed, never picked silently
    root = tmp_path / "two"
    _png(root / "a" / "x.png", np.zeros((8, 8), np.uint8))
    _png(root / "b" / "x.png", np.zeros((8, 8), np.uint8))
    _png(root / "y.png", np.zeros((8, 8), np.uint8))
    _png(root / "y.bmp", np.zeros((8, 8), np.uint8))
    t = pd.DataFrame({"Image_filename": ["x.png", "y", "b/x.png"], "Classification": ["benign", "benign", "malignant"]})
    f = resolve_rows(t, root, "Image_filename", "Classification")
    assert list(f.rows["image"]) == ["b/x.png"] and f.bad["reason"].str.contains("ambiguous").sum() == 2


def test_evaluate_no_row_matches_says_how_many_with_examples(capsys, tmp_path, demo_root):
    labels = _label_table(demo_root, tmp_path / "labels.csv", image=lambda f: f"IMG_{f.stem}")
    n = len(pd.read_csv(labels))
    line = cli(capsys, ["evaluate", str(demo_root), "--labels", str(labels), "--model", str(tmp_path / "m.keras"),
                        "--out", str(tmp_path / "out")], f"none of the {n} rows", "IMG_", "--image-column")
    assert "{}" not in line


# ---------------------------------------------------------------- 3. tracebacks left
@pytest.mark.parametrize("option", ["--reports-dir", "--data-dir"])
def test_output_folder_that_is_a_file(capsys, tmp_path, option):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    cli(capsys, ["--demo", "--only", "00", option, str(f)] + (["--reports-dir", str(tmp_path / "r")] if option != "--reports-dir"
                                                              else ["--data-dir", str(tmp_path / "d")]),
        "is a file", str(f), entry=run_all_main)
    assert f.read_text() == "mine\n"
    if option == "--data-dir":
        cli(capsys, ["check-data", "demo", "--data-dir", str(f)], "is a file")


@pytest.mark.parametrize("kind", ["two_input", "segmenter_beside", "s1_crop_name"])
def test_crop_pipeline_classifier_without_its_card(capsys, tmp_path, demo_root, kind):
    keras = pytest.importorskip("keras")
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    if kind == "two_input":
        crop = keras.Input((16, 16, 3))
        model = keras.Model([inp, crop], keras.layers.Dense(3, activation="softmax")(
            keras.layers.Concatenate()([x, keras.layers.GlobalAveragePooling2D()(crop)])), name="lesion_aware-two_stream")
    else:
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x),
                            name="s1_crop-mobilenet_v2-b2" if kind == "s1_crop_name" else "classifier")
    path = tmp_path / "copied.keras"
    model.save(path)
    if kind == "segmenter_beside":
        shutil.copy(path, tmp_path / "copied.segmenter.keras")
    cli(capsys, ["predict", str(demo_root / "benign"), "--model", str(path)], "crop pipeline", ".json")


def test_full_data_folder_names_the_file(monkeypatch, prepared):
    from busi_study.data import arrays
    from busi_study.data.store import write_json
    from busi_study.errors import StorageError

    _, _, data = prepared

    def full(*a, **k):  # numpy's write fails without a file name, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(StorageError, match=r"cannot write .*masks_24_.*\.npy: no space left") as e:
        arrays.load_mask_array(data.store, 24, progress=False)
    assert "\n" not in str(e.value) and str(data.store.cache_dir) in str(e.value)
    with pytest.raises(StorageError, match=r"cannot write .*images_24_none_.*\.npy: no space left"):
        arrays.load_image_array(data.store, 24, progress=False)
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full())
    target = data.store.folder.parent / "x" / "y.json"
    with pytest.raises(StorageError, match="y.json: no space left"):
        write_json({"a": 1}, target)
    assert not list(target.parent.glob("*"))


def test_full_data_folder_while_making_the_demo_data(capsys, monkeypatch, tmp_path):
    from PIL import Image as PILImage

    def full(self, fp, *a, **k):  # PIL's write fails without a file name, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", full)
    cli(capsys, ["check-data", "demo", "--data-dir", str(tmp_path / "d")], "no space left", ".png", str(tmp_path / "d"))


def test_reports_folder_full_at_the_end_of_a_run(capsys, monkeypatch, tmp_path, fake_papermill):
    real = Path.write_text

    def full(self, *a, **k):  # the disk fills up when the runner writes run.json (the OS names no file)
        if self.name.startswith(".run.") and self.suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    cli(capsys, ["--demo", "--profile", "smoke", "--no-progress", "--reports-dir", str(tmp_path / "reports"),
                 "--data-dir", str(tmp_path / "data")], "run.json", "no space left", entry=run_all_main)
    runs = [p for p in (tmp_path / "reports").iterdir() if p.name != "latest"]
    assert len(runs) == 1 and not (runs[0] / "RUNNING").exists() and not (runs[0] / "COMPLETE.json").exists()
    assert not (tmp_path / "reports" / "latest").exists()


# ---------------------------------------------------------------- 4. confusing behaviour
@pytest.mark.parametrize("what", ["empty_folder", "busi", "a_file"])
def test_external_that_is_not_the_external_set(capsys, tmp_path, demo_root, fake_papermill, what):
    ext = {"empty_folder": tmp_path / "empty", "busi": demo_root, "a_file": tmp_path / "notes.txt"}[what]
    if what == "empty_folder":
        ext.mkdir()
    elif what == "a_file":
        ext.write_text("x")
    cli(capsys, ["--demo", "--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--data-dir", str(tmp_path / "d"),
                 "--external", str(ext)], "--external", entry=run_all_main)
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


def test_console_says_when_the_external_validation_skipped(tmp_path, fake_papermill, capsys):
    def skipped(report_dir):  # what notebook 08 writes without external data
        (report_dir / "external_summary.json").write_text(json.dumps(
            {"skipped": "no external data given. Get BrEaST-Lesions_USG from TCIA …"}))

    fake_papermill["08_external_validation"] = skipped
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "external validation skipped: no external data given (run_all.py --external PATH" in out


def test_only_runs_after_an_external_run_build_on_it(tmp_path, fake_papermill, capsys):
    from busi_study.data.breast_demo import make_demo_external

    ext = make_demo_external(tmp_path / "ext")
    assert _run(tmp_path) == 0
    assert _run(tmp_path, "--only", "08", "--external", str(ext)) == 0
    capsys.readouterr()
    assert _run(tmp_path, "--only", "02") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert str(ext) in out  # says it keeps the external set of the run it builds on
    meta = json.loads(((tmp_path / "reports" / "latest") / "run.json").read_text())
    assert meta["params"]["external_data"] == str(ext.resolve())


def test_a_parameter_given_differently_names_its_option(tmp_path, fake_papermill, capsys):
    assert _run(tmp_path) == 0
    capsys.readouterr()
    line = cli(capsys, ["--demo", "--profile", "smoke", "--no-progress", "--reports-dir", str(tmp_path / "reports"),
                        "--data-dir", str(tmp_path / "data"), "--only", "02", "--seed", "7"], "--seed", entry=run_all_main)
    assert "--set" not in line


@pytest.mark.parametrize("setting", ["s3_backbones=5", "gradcam_method=3", "s1_crop_margins=[a, b]", "external_gallery=many"])
def test_wrong_type_for_a_notebook_parameter_fails_before_any_notebook(capsys, tmp_path, fake_papermill, setting):
    fake_papermill["00_download"] = RuntimeError("a notebook ran")
    cli(capsys, ["--demo", "--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--data-dir", str(tmp_path / "d"),
                 "--set", setting], setting.split("=")[0], entry=run_all_main)
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


@pytest.mark.parametrize("setting", ["phash_threshold=-5", "val_fraction=1.5", "s2_epochs=0", "s0_dropout=1",
                                     "n_splits=1", "bootstrap_resamples=0", "s3_learning_rate=-0.1", "s1_crop_margins=[0.1, -1]",
                                     "s1_seg_threshold=0", "figure_dpi=0"])
def test_out_of_range_parameter(capsys, tmp_path, setting):
    key = setting.split("=")[0]
    cli(capsys, ["--profile", "smoke", "--set", setting, "--list"], key, entry=run_all_main)
    cli(capsys, ["check-data", "demo", "--data-dir", str(tmp_path / "d"), "--profile", _profile_with(tmp_path, setting)], key)


def _profile_with(tmp_path: Path, setting: str) -> str:
    key, value = setting.split("=", 1)
    p = tmp_path / "mine.yaml"
    p.write_text(f"inherits: smoke\n{key}: {value}\n")
    return str(p)


@pytest.mark.parametrize("option", ["--data", "--external", "--reports-dir", "--data-dir"])
def test_empty_path_option(capsys, tmp_path, option):
    cli(capsys, ["--profile", "smoke", option, "", *(["--reports-dir", str(tmp_path / "r")] if option != "--reports-dir" else [])],
        option, "empty", entry=run_all_main)


@pytest.mark.parametrize("argv", [["predict", "IMG", "--model", "M", "--out", ""],
                                  ["evaluate", "IMG", "--labels", "L", "--model", "M", "--out="],
                                  ["check-data", "demo", "--data-dir", ""]])
def test_empty_path_option_of_the_tools(capsys, tmp_path, demo_root, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    cli(capsys, [str(demo_root) if a == "IMG" else a for a in argv], "is empty")
    assert digest(tmp_path) == before  # nothing written to the current folder


def test_clean_failed_in_a_read_only_folder(capsys, monkeypatch, tmp_path, fake_papermill):
    fake_papermill["00_download"] = RuntimeError("boom")
    assert _run(tmp_path) == 1
    bad = runner.failed_runs(tmp_path / "reports")[0]

    def ro(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(path) / "FAILED.txt"))

    monkeypatch.setattr(runner.shutil, "rmtree", ro)
    capsys.readouterr()
    line = cli(capsys, ["--clean-failed", "--reports-dir", str(tmp_path / "reports")], "cannot remove", bad.name,
               entry=run_all_main)
    assert "write" not in line and bad.exists()


def test_failed_line_names_what_latest_points_to(capsys, tmp_path, fake_papermill):
    assert _run(tmp_path) == 0  # smoke
    smoke = (tmp_path / "reports" / "latest").resolve()
    assert run_all_main(["--demo", "--profile", "default", "--no-progress", "--reports-dir", str(tmp_path / "reports"),
                         "--data-dir", str(tmp_path / "data")]) == 0
    newest = (tmp_path / "reports" / "latest").resolve()
    assert newest != smoke
    fake_papermill["01_eda_intensity"] = RuntimeError("boom")
    capsys.readouterr()
    assert _run(tmp_path, "--only", "01") == 1  # builds on the smoke run; latest is the default run
    err = capsys.readouterr().err
    assert f"-> {newest.name}" in err and f"-> {smoke.name}" not in err


def test_app_with_a_missing_model_starts_no_server(capsys, monkeypatch, tmp_path):
    from busi_study.app import server

    monkeypatch.setattr(server.subprocess, "call", lambda *a, **k: pytest.fail("a server was started"))
    cli(capsys, ["--model", str(tmp_path / "nope.keras")], "model file not found", entry=server.main)


# ---------------------------------------------------------------- 5. make test offline: weight-dependent tests skip
@pytest.mark.parametrize("name", ["test_crop_cv_uses_each_folds_own_crops",
                                  "test_attention_candidate_learns_its_map_from_the_masks"])
def test_weight_dependent_tests_skip_without_the_weight_cache(monkeypatch, name):
    pytest.importorskip("keras")
    from busi_study.models import registry
    from tests import test_lesion_pipeline as tl

    monkeypatch.setattr(registry, "weights_available", lambda *a, **k: (False, "not in the Keras cache (offline)"))
    fn = getattr(tl, name)
    args = {p: None for p in fn.__code__.co_varnames[: fn.__code__.co_argcount]}
    with pytest.raises(pytest.skip.Exception, match="ImageNet"):
        fn(**args)


# ---------------------------------------------------------------- 6. the console of a run
def test_kernel_noise_goes_to_the_run_log(capfd, tmp_path, fake_papermill):
    import subprocess
    import sys

    def noisy(report_dir):  # what a kernel and TensorFlow print on the inherited stderr
        os.write(2, b"[IPKernelApp] WARNING | Kernel is running over TCP without encryption.\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('E0000 00:00 node_def_util.cc:680] "
                        "use_unbounded_threadpool\\n'); print('I0000 oneDNN custom operations are on')"], check=True)

    fake_papermill["01_eda_intensity"] = noisy
    assert _run(tmp_path) == 0
    out, err = capfd.readouterr()
    for noise in ("without encryption", "node_def_util", "oneDNN"):
        assert noise not in out and noise not in err
    assert "01_eda_intensity …" in out and "done in" in out
    log = (tmp_path / "reports" / "latest" / "logs" / "01_eda_intensity.log").read_text()
    assert "without encryption" in log and "node_def_util" in log and "oneDNN" in log


KINDS = [
    "data: missing path", "data: plain file", "data: not a zip", "data: zip with a corrupt member",
    "data: no class folders", "data: a missing class folder", "data: a class without usable images",
    "data: too small to split", "file: 16-bit PNG", "file: float TIFF (NaN, out-of-[0,1] range)",
    "file: same-stem x.png + x.tif", "param: unknown profile", "param: unknown key", "param: wrong type",
    "param: malformed --set", "param: unknown notebook", "param: --data missing", "param: broken profile YAML",
    "predict: model missing", "predict: corrupt model", "predict: not a .keras file", "predict: model of another task",
    "predict: --out in a missing folder", "predict: --out is a folder", "predict: --out folder read-only",
    "predict: no images",
    "fs: full disk writing --out", "fs: read-only --out", "fs: no permission for --out", "fs: read-only reports folder",
    "fs: full disk starting a run", "fs: full disk during check-data", "runner: interrupted run",
    "runner: --only links, earlier run unchanged", "runner: --clean-failed", "provenance: report without data",
    "provenance: two datasets", "provenance: changed splits", "provenance: results of other splits",
    "provenance: --only 00 with new splits beside old results", "runner: legacy runs kept by --clean-failed",
    # no wrong number, no silent mixing
    "probabilities: evaluate's metrics = scikit-learn's on its predictions (binary, three-class)",
    "probabilities: a binary model asked about a class it lacks", "probabilities: a table with an empty class column",
    "probabilities: the app and a binary model",
    "data key: same images, other masks", "provenance: masks changed after 00", "provenance: external set changed under a carried 08",
    "labels: extra fields, Latin-1, BOM + semicolons, tabs", "labels: empty, corrupt xlsx, binary, a folder",
    "labels: an image listed twice or with two labels", "evaluate: --out is a file", "evaluate: --resamples/--temperature/--seed",
    "labels: names without their extension, ambiguous names", "labels: no row matches",
    "fs: --reports-dir / --data-dir is a file", "predict: crop classifier without its card", "fs: full data folder (caches, json)",
    "fs: reports folder full at the end of a run", "param: --external not the external set",
    "runner: --only after an --external run", "runner: a parameter given differently names its option",
    "param: wrong type for a notebook parameter", "param: out of range", "param: empty path option",
    "runner: --clean-failed on a read-only folder", "runner: FAILED line names latest's target", "app: missing --model",
    "tests: weight-dependent tests skip offline", "console: kernel noise in the run's log",
    "predict: fold ensemble mixing a binary and a three-class model", "labels: UTF-16 (Excel's Unicode text)",
    "param: empty path option of predict / evaluate / check-data", "fs: full data folder while making the demo data",
    "console: a skipped external validation says so",
]


def test_at_least_25_kinds():
    assert len(KINDS) >= 25 + 34


def test_runner_environment_for_deterministic_kernels_respects_user_values():
    from busi_study.models.determinism import ENVIRONMENT, export_environment

    env = {"PYTHONHASHSEED": "123"}
    got = export_environment(env)
    assert got["PYTHONHASHSEED"] == "123" and got["TF_DETERMINISTIC_OPS"] == ENVIRONMENT["TF_DETERMINISTIC_OPS"] == "1"
