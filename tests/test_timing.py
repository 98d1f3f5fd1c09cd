"""Step timing: the timing module (nesting, no-op outside a run, notebook cells), the runner's side
(cell names, the time left from an earlier run, the console, the front-page table) and a real
kernel run through the runner in which every cell of a notebook is a timed step.

Nothing here asserts how fast anything is: speed is measured, not tested."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

from busi_study import timing
from busi_study.cli import REPO
from busi_study.report import steps as sv
from busi_study.report.runner import RunConfig, discover_notebooks, run_study


@pytest.fixture()
def step_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "logs" / "nb.steps.jsonl"
    log.parent.mkdir()
    monkeypatch.setenv(timing.STEP_LOG_ENV, str(log))
    monkeypatch.setenv(timing.NOTEBOOK_ENV, "03_x")
    return log


# ---------------------------------------------------------------- the module
def test_outside_a_run_nothing_is_recorded_and_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.delenv(timing.STEP_LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    @timed_fn("work {n}")
    def work(n):
        return n * 2

    with timing.step("block") as s:
        assert s is not None
    assert work(3) == 6 and work.__name__ == "work"
    assert list(timing.timed_iter(range(3), "pass {}")) == [0, 1, 2]
    with pytest.raises(ZeroDivisionError), timing.step("fails"):
        work(1 / 0)
    assert not timing.active() and list(tmp_path.iterdir()) == []


def timed_fn(template):
    return timing.timed(template)


def test_steps_nest_with_parents_and_record_failures(step_log):
    class Model:
        name = "s0"

    @timing.timed("cross-validation {model.name} ({k} folds)")
    def cv(model, k=2):
        return [f for f in timing.timed_iter(range(k), "fold {}")]

    @timing.timed("broken {missing.attr}")
    def broken(x):
        return x

    with timing.step("cell [4]", cell=4):
        assert cv(Model()) == [0, 1]
        assert broken(1) == 1
        with pytest.raises(ValueError), timing.step("fails"):
            raise ValueError("x")
    with timing.step("after"):
        time.sleep(0.01)
    rec = timing.read_step_log(step_log)
    names = [r["step"] for r in rec]
    assert names == ["cell [4]", "cross-validation s0 (2 folds)", "fold 0", "fold 1", "broken {missing.attr}", "fails", "after"]
    by = {r["step"]: r for r in rec}
    assert by["cell [4]"]["depth"] == 0 and by["cell [4]"]["cell"] == 4 and by["cell [4]"]["parent"] is None
    assert by["fold 1"]["parent"] == "cross-validation s0 (2 folds)" and by["fold 1"]["depth"] == 2
    assert by["fold 1"]["parent_id"] == by["cross-validation s0 (2 folds)"]["id"]
    assert by["fails"]["ok"] is False and by["fold 0"]["ok"] is True
    assert by["after"]["parent"] is None and by["after"]["depth"] == 0 and by["after"]["seconds"] >= 0.01
    assert all(r["notebook"] == "03_x" and r["seconds"] is not None and r["cpu_s"] >= 0 for r in rec)
    assert by["cell [4]"]["seconds"] >= by["cross-validation s0 (2 folds)"]["seconds"]


def test_an_unwritable_step_log_never_stops_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(timing.STEP_LOG_ENV, str(tmp_path / "missing" / "folder" / "log.jsonl"))
    with timing.step("a"):
        pass
    with timing.step("b"):
        pass
    assert capsys.readouterr().err.count("step timing switched off") == 1
    timing._broken.clear()


def test_a_log_being_written_reads_without_its_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"e":"start","id":"1-1","parent_id":null,"notebook":"n","step":"a","parent":null,"depth":0,"t":5}\n'
                   '{"e":"end","id":"1-1","seconds":2.0,"ok":true}\n{"e":"start","id":"1-2","par')
    assert [(r["step"], r["seconds"]) for r in timing.read_step_log(log)] == [("a", 2.0)]
    assert timing.read_step_log(tmp_path / "none.jsonl") == []


def test_every_cell_of_an_ipython_shell_is_a_step_with_its_execution_count(step_log):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        start = shell.execution_count
        assert timing.time_cells(shell) and timing.time_cells(shell)  # idempotent
        shell.run_cell("from busi_study.timing import step\nwith step('inside'):\n    pass", store_history=True)
        shell.run_cell("   ", store_history=True)  # empty: not executed, no step
        shell.run_cell("1 / 0", store_history=True)
        shell.run_cell("x = 1", store_history=True)
    finally:
        shell.events.callbacks["pre_run_cell"].clear()
        shell.events.callbacks["post_run_cell"].clear()
        InteractiveShell.clear_instance()
    rec = timing.read_step_log(step_log)
    cells = [r for r in rec if r["cell"] is not None]
    assert [r["cell"] for r in cells] == [start, start + 1, start + 2]
    assert [r["ok"] for r in cells] == [True, False, True]
    inside = next(r for r in rec if r["step"] == "inside")
    assert inside["parent_id"] == cells[0]["id"] and inside["depth"] == 1


# ---------------------------------------------------------------- names, records, estimate
def _notebook(cells) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    return json.loads(nbformat.writes(nb))


def test_cells_are_named_after_the_notebook_structure():
    p = nbformat.v4.new_code_cell("x = 1")
    p.metadata["tags"] = ["parameters"]
    nb = _notebook([nbformat.v4.new_markdown_cell("# 09 · title"), p, nbformat.v4.new_code_cell("import os"),
                    nbformat.v4.new_markdown_cell("Some text.\n\n## 1 · The **first** step\n\nmore"),
                    nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell(""), nbformat.v4.new_code_cell("b = 2"),
                    nbformat.v4.new_markdown_cell("### A `sub` step"), nbformat.v4.new_code_cell("c = 3")])
    assert sv.cell_titles(nb) == {1: "cell 1 · parameters", 2: "cell 2 · parameters (injected by papermill)",
                                  3: "cell 3 · setup", 4: "cell 4 · 1 · The first step", 5: "cell 5 · 1 · The first step",
                                  6: "cell 6 · A sub step"}


@pytest.mark.parametrize("nb", discover_notebooks(REPO / "notebooks"), ids=lambda p: p.stem)
def test_every_cell_of_the_study_notebooks_gets_a_step_name(nb):
    code = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    titles = sv.cell_titles(nb)
    assert sorted(titles) == list(range(1, len(code) + 2))  # + papermill's injected parameters cell
    assert titles[1] == "cell 1 · parameters" and titles[2].startswith("cell 2 · parameters (injected")
    assert all(len(t) < 90 for t in titles.values())


def test_notebook_steps_name_cells_and_parents(step_log):
    nb = _notebook([nbformat.v4.new_markdown_cell("## Work"), nbformat.v4.new_code_cell("a = 1")])
    t0 = time.time()
    with timing.step(timing.CELL_PLACEHOLDER.format(2), cell=2), timing.step("inner"):
        pass
    rec = sv.notebook_steps(step_log, nb, t0)
    assert [(r["step"], r["parent"], r["id"], r["parent_id"]) for r in rec] == [
        ("cell 2 · Work", None, 1, None), ("inner", "cell 2 · Work", 2, 1)]  # no parameters cell: papermill's comes first
    assert rec[0]["start_s"] >= 0 and rec[0]["notebook"] == "03_x"


def _meta(walls: dict, steps=()) -> dict:
    return {"run_id": "R1", "wall_s": sum(walls.values()), "steps": list(steps),
            "notebooks": [{"name": n, "ok": True, "wall_s": w, "from_run": None} for n, w in walls.items()]}


def test_the_time_left_comes_from_the_last_complete_run_of_the_profile(tmp_path):
    none = sv.Estimate.from_run(None)
    assert not none.known and none.text("02_a", ["03_b"]) == "no earlier complete run of this profile to estimate the time left"
    assert sv.Estimate.from_run(tmp_path / "nothing").known is False
    steps = [{"notebook": "03_b", "cell": 1, "start_s": 2.0, "seconds": 10.0},
             {"notebook": "03_b", "cell": 2, "start_s": 12.0, "seconds": 100.0},
             {"notebook": "03_b", "cell": 3, "start_s": 112.0, "seconds": 50.0},
             {"notebook": "03_b", "cell": None, "start_s": 13.0, "seconds": 99.0},
             {"notebook": "02_a", "step": sv.HTML_STEP, "cell": None, "seconds": 2.0},
             {"notebook": "runner", "step": "model comparison", "cell": None, "seconds": 3.0}]
    run = tmp_path / "R1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_meta({"02_a": 60.0, "03_b": 170.0}, steps)))
    est = sv.Estimate.from_run(run)
    assert est.known and est.run_id == "R1"
    # the runner's HTML export counts with its notebook, its model comparison (3 s) after the last one
    assert est.left("02_a", ["03_b"], elapsed=20.0) == (42.0 + 170.0 + 3.0, [])
    # in cell 2 of 03_b for 30 s: 70 s of it left, cell 3 (50 s) and the 8 s after the last cell
    assert est.left("03_b", [], elapsed=45.0, cell=2, cell_elapsed=30.0) == (70.0 + 50.0 + 8.0 + 3.0, [])
    assert est.left("03_b", [], elapsed=500.0, cell=3, cell_elapsed=400.0) == (8.0 + 3.0, [])  # slower than last time: never negative
    assert est.left("02_a", ["04_new"])[1] == ["04_new"]
    assert est.text("02_a", ["03_b", "04_new"]) == "about 4 min left + 04_new (not in run R1)"


def test_durations_read_as_a_person_says_them():
    assert [sv.duration(s) for s in (0, 45.4, 89, 95, 3000, 5400, 7260)] == [
        "0 s", "45 s", "89 s", "2 min", "50 min", "1 h 30 min", "2 h 01 min"]


def test_the_console_names_the_current_step_once_when_it_has_run_a_while(step_log):
    lines = []
    w = sv.StepWatcher(step_log, "03_x", {4: "cell 4 · Grouped CV"}, lines.append,
                       eta=lambda cell, cell_s, nb_s: f"cell {cell}, {cell_s:.0f} s in it", started=time.time() - 100)
    with timing.step(timing.CELL_PLACEHOLDER.format(4), cell=4):
        t = time.time()
        with timing.step("quick"):
            pass
        with timing.step("cross-validation s0"):
            assert w.poll(now=t + 1) == []              # nothing has run long enough yet
            assert w.poll(now=t + 5) == ["    › cell 4 · Grouped CV  (1:45 into 03_x; cell 4, 5 s in it)"]
            shown = w.poll(now=t + 20)                  # the cell is not named twice; the long inner step is
            assert shown == ["    › cell 4 · Grouped CV › cross-validation s0  (2:00 into 03_x; cell 4, 20 s in it)"]
            assert w.poll(now=t + 60) == []
    assert w.poll(now=t + 100) == [] and lines == [
        "    › cell 4 · Grouped CV  (1:45 into 03_x; cell 4, 5 s in it)",
        "    › cell 4 · Grouped CV › cross-validation s0  (2:00 into 03_x; cell 4, 20 s in it)"]


def test_the_front_page_says_where_the_time_goes(tmp_path):
    from busi_study.report.index import _timing_section

    steps = [{"notebook": "02_a", "step": "cell 3 · Grouped CV", "parent": None, "depth": 0, "cell": 3, "seconds": 50.0,
              "cpu_s": 95.0, "id": 1, "parent_id": None},
             {"notebook": "02_a", "step": "cross-validation s2_cnn", "parent": "cell 3 · Grouped CV", "depth": 1, "cell": None,
              "seconds": 40.0, "id": 2, "parent_id": 1},
             {"notebook": "02_a", "step": sv.HTML_STEP, "parent": None, "depth": 0, "cell": None, "seconds": 2.0},
             {"notebook": "03_b", "step": "cell 4 · Head", "parent": None, "depth": 0, "cell": 4, "seconds": 20.0, "id": 1,
              "parent_id": None},
             {"notebook": "03_b", "step": "model run s3", "parent": "cell 4 · Head", "depth": 1, "cell": None, "seconds": 19.0,
              "id": 2, "parent_id": 1}]
    meta = _meta({"02_a": 60.0, "03_b": 25.0}, steps)
    html = _timing_section(meta, top=3)
    assert "tables/timing_steps.csv" in html and "The 3 slowest steps" in html
    slowest = html[html.index("The 3 slowest steps"):]
    assert slowest.index("cell 3 · Grouped CV") < slowest.index("cross-validation s2_cnn") < slowest.index("model run s3")
    assert sv.HTML_STEP not in slowest and "<td>1.9</td>" in slowest  # cores busy: 95 CPU s in 50 s
    # cell 4 is almost all its model run (19 of 20 s): the list shows the model run, not both
    assert [r["step"] for _, r in sv.slowest_steps(steps, 10).iterrows()] == [
        "cell 3 · Grouped CV", "cross-validation s2_cnn", "model run s3", sv.HTML_STEP]
    totals = sv.notebook_totals(meta).set_index("notebook")
    assert totals.loc["02_a", "in_cells_s"] == 50.0 and totals.loc["02_a", "other_s"] == 12.0
    assert totals.loc["03_b", "slowest_cell"] == "cell 4 · Head"
    assert "No step timings" in _timing_section(_meta({"02_a": 60.0}))
    table = sv.steps_table(steps)
    assert list(table.columns) == sv.STEP_COLUMNS and len(table) == 5


# ---------------------------------------------------------------- a real kernel through the runner
def _tiny_repo(root: Path) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                            "language_info": {"name": "python"}})
    params = nbformat.v4.new_code_cell('report_dir = ""\ndata_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · tiny"), params,
                nbformat.v4.new_code_cell("import time\nfrom busi_study.timing import step, timed_iter"),
                nbformat.v4.new_markdown_cell("## Work"),
                nbformat.v4.new_code_cell("with step('inner'):\n    time.sleep(5)\n"
                                          "for k in timed_iter(range(2), 'pass {}'):\n    pass"),
                nbformat.v4.new_code_cell(""), nbformat.v4.new_code_cell("x = 1")]
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(nb, root / "notebooks" / "00_tiny.ipynb")
    return root


def test_the_runner_times_every_cell_of_a_notebook_and_estimates_the_next_run(tmp_path, capfd):
    repo = _tiny_repo(tmp_path / "repo")

    def run() -> Path:
        cfg = RunConfig(repo=repo, profile="smoke", params={"data_source": "demo"}, reports_dir=tmp_path / "reports",
                        data_dir=tmp_path / "data", progress=False, kernel_name="python3")
        assert run_study(cfg) == 0
        return (tmp_path / "reports" / "latest").resolve()

    first = run()
    out, err = capfd.readouterr()
    assert "Time: no earlier complete run of this profile to estimate the time left" in out
    assert "› cell 4 · Work  (" in err  # the long cell, named while it ran (the step lines go with the progress bar)
    meta = json.loads((first / "run.json").read_text())
    executed = json.loads((first / "notebooks" / "00_tiny.ipynb").read_text())
    counts = sorted(c["execution_count"] for c in executed["cells"] if c["cell_type"] == "code" and c["execution_count"])
    cells = {s["cell"]: s for s in meta["steps"] if s["notebook"] == "00_tiny" and s["cell"] is not None}
    assert sorted(cells) == counts == [1, 2, 3, 4, 5]  # every executed cell, the parameters cells included
    assert all(s["seconds"] is not None and s["ok"] for s in cells.values())
    inner = next(s for s in meta["steps"] if s["step"] == "inner")
    assert inner["parent"] == "cell 4 · Work" and inner["depth"] == 1 and inner["seconds"] >= 5
    assert cells[4]["seconds"] >= inner["seconds"]
    assert {"pass 0", "pass 1", sv.HTML_STEP} <= {s["step"] for s in meta["steps"]}
    table = (first / "tables" / "timing_steps.csv").read_text()
    assert "cell 4 · Work" in table and (first / "tables" / "timing_steps.tex").exists()
    index = (first / "index.html").read_text()
    assert "Where the time goes" in index and "cell 4 · Work" in index
    assert not (set(timing.kernel_environment("x", "y")) & {k for k in __import__("os").environ if k.startswith("BUSI_STEP")})

    second = run()
    out, _ = capfd.readouterr()
    assert f"(from run {first.name})" in out and "[1/1] 00_tiny … (last run" in out and "about" in out
    assert second != first


def test_the_kernel_startup_file_defines_nothing_in_the_notebook():
    text = timing.STARTUP_FILE.read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert code == ['__import__("busi_study.timing").timing.kernel_startup()']
    assert sys.modules["busi_study.timing"].kernel_environment("/l", "n")["PYTHONSTARTUP"] == str(timing.STARTUP_FILE)
