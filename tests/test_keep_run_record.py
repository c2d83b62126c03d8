"""scripts/keep_run_record.py: a run's kept record reads back as the run itself for ``compare``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from segbench.analysis.runs import find_runs, load_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "keep_run_record.py"


def _script():
    spec = importlib.util.spec_from_file_location("keep_run_record", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kept_record_reads_back_as_the_run(finished_run, tmp_path):
    import shutil

    run = tmp_path / "sweep" / finished_run.name
    shutil.copytree(finished_run, run)
    (run / "adapt.json").write_text('{"metric": "dice", "methods": {"none": {"dice": 0.5}}}')
    assert _script().main([str(run.parent), "--out", str(tmp_path / "kept")]) == 0
    kept = tmp_path / "kept" / finished_run.name
    assert not list(kept.rglob("*.pt"))  # checkpoints are not part of the record
    assert (kept / "adapt.json").read_text() == (run / "adapt.json").read_text()  # the site table reads it
    assert (kept / "app.log").read_text() == (run / "app.log").read_text()
    finished_run = run
    original, copy = load_run(finished_run), load_run(kept)
    assert copy.metrics == original.metrics and copy.overrides == original.overrides
    assert copy.scalars.keys() == original.scalars.keys() and copy.scalars
    for tag, (steps, values) in original.scalars.items():
        np.testing.assert_array_equal(copy.scalars[tag][0], steps)
        np.testing.assert_array_equal(copy.scalars[tag][1], values)
    assert [r.path for r in find_runs([str(tmp_path / "kept")])] == [kept]


def test_a_missing_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    assert _script().main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "kept")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and "is not a folder" in err
    assert not (tmp_path / "kept").exists()


def test_a_folder_without_finished_runs_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _script().main([str(tmp_path / "empty"), "--out", str(tmp_path / "kept")]) == 2
    assert "no finished runs" in capsys.readouterr().err and not (tmp_path / "kept").exists()


def test_a_broken_run_among_good_ones_is_refused_before_anything_is_written(finished_run, tmp_path, capsys):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(finished_run, sweep / "0_good", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(finished_run, sweep / "1_broken", ignore=shutil.ignore_patterns("checkpoints"))
    (sweep / "1_broken" / "metrics.json").write_text("{not json")
    assert _script().main([str(sweep), "--out", str(tmp_path / "kept")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1_broken/metrics.json cannot be read" in err
    assert not (tmp_path / "kept").exists()


def test_thinning_keeps_every_nth_training_point_the_last_ten_and_every_validation():
    script = _script()
    points = list(range(100))
    kept = script.thinned(points, 10)
    assert kept == list(range(0, 90, 10)) + list(range(90, 100))  # compare's final loss: the last 10 points
    assert script.thinned(points, 1) == points and script.thinned(points[:8], 10) == points[:8]


def test_a_thinned_record_keeps_validation_curves_and_the_final_training_loss(finished_run, tmp_path):
    from segbench.analysis.compare import _final_train_loss

    assert _script().main([str(finished_run.parent), "--out", str(tmp_path / "kept"), "--thin", "3"]) == 0
    original, copy = load_run(finished_run), load_run(tmp_path / "kept" / finished_run.name)
    per_step = max(_script().KEEP_LAST + 1, original.metrics["steps"] // 2)
    for tag, (_steps, values) in original.scalars.items():
        if len(values) < per_step:  # logged per validation: kept whole
            np.testing.assert_array_equal(copy.scalars[tag][1], values)
        else:
            assert len(copy.scalars[tag][1]) < len(values)
    assert _final_train_loss(copy) == _final_train_loss(original)


def test_a_bad_thin_value_is_one_line_exit_2_and_writes_nothing(finished_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "kept"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(finished_run.parent), "--out", str(out), "--thin", "0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "'0' is not a whole number >= 1" in done.stderr and not out.exists()
