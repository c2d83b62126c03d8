"""The run directory: one writer, no leftovers, shared file modes, and resume from the run itself."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest
import yaml

from segbench import io
from segbench.errors import SegbenchError, one_line
from segbench.train.rundir import LOCK_NAME, lock_holder, remove_if_untouched, remove_orphans, run_lock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_lock_refuses_a_second_writer(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{socket.gethostname()} {os.getppid()}\n")
    with pytest.raises(SegbenchError, match="in use by another segbench run"):
        with run_lock(tmp_path):
            pass


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{socket.gethostname()} {_dead_pid()}\n")
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()


def test_orphans_of_interrupted_saves_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half")
    kept = tmp_path / "checkpoints" / "last.pt"
    kept.write_bytes(b"whole")
    assert remove_orphans(tmp_path) == [orphan]
    assert kept.exists() and not orphan.exists()


def test_only_a_folder_with_nothing_but_hydra_files_is_removed(tmp_path):
    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / "app.log").write_text("")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    assert remove_if_untouched(tmp_path / "a") and not (tmp_path / "a").exists()
    assert not remove_if_untouched(tmp_path / "b") and (tmp_path / "b").exists()


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        io._UMASK = 0o022
        path = io.write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
        io._UMASK = io._read_umask()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_checkpoint_write_names_the_path_and_the_cause(tmp_path, monkeypatch):
    import torch

    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError) as info:
        io.save_torch(tmp_path / "last.pt", {})
    assert info.value.errno == errno.ENOSPC
    assert "No space left on device" in one_line(info.value) and "last.pt" in one_line(info.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_resume_from_the_run_keeps_its_config_and_says_where_it_continued(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved_config = (run / ".hydra" / "config.yaml").read_text()
    (run / "checkpoints" / ".last.pt.x.tmp").write_bytes(b"orphan")
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", f"trainer.resume={run}", "trainer.max_steps=3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "resumed at step 2 of 3" in log
    assert "best val dice_tuned" in log and "test dice" in log and f"run: {run}" in log
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert overrides.count("trainer.max_steps=3") == 1 and "trainer.max_steps=2" not in overrides
    assert "max_steps: 3" in (run / ".hydra" / "config.yaml").read_text()
    assert saved_config.replace("max_steps: 2", "max_steps: 3") == (run / ".hydra" / "config.yaml").read_text()
    assert not (run / "checkpoints" / ".last.pt.x.tmp").exists()
    assert not (run / LOCK_NAME).exists()


def test_smaller_budget_on_a_finished_run_leaves_its_metrics(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    metrics = (run / "metrics.json").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", f"trainer.resume={run}", "trainer.max_steps=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "is finished" in result.stdout
    assert (run / "metrics.json").read_text() == metrics


def test_dry_run_turns_a_failing_first_step_into_one_line(tiny_cfg):
    from pathlib import Path

    from segbench.train.prepare import dry_run, prepare

    cfg = tiny_cfg()
    prepared = prepare(cfg, Path("."))

    def broken(logits, target):
        raise RuntimeError("shape mismatch\nmore lines torch would print")

    prepared.loss_fn = broken
    with pytest.raises(
        SegbenchError,
        match=r"^a first training step with this config fails: RuntimeError: "
        r"shape mismatch$",
    ):
        dry_run(prepared, cfg)


def test_an_option_added_later_at_its_null_default_does_not_block_a_resume():
    from segbench.train.checkpoint import changed_settings

    saved = {"data": {"root": "d", "folds": None}, "trainer": {"max_steps": 5}}
    assert (
        changed_settings(saved, {"data": {"root": "d", "folds": None, "test_sites": None}, "trainer": {"max_steps": 9}})
        == []
    )
    assert changed_settings(
        saved, {"data": {"root": "d", "folds": None, "test_sites": ["site1"]}, "trainer": {"max_steps": 5}}
    ) == ["data.test_sites"]


def test_a_named_run_folder_is_claimed_before_hydra_writes(tmp_path):
    """The lock is taken in the preflight, by the process that will train: a second start is refused
    before it has written anything, a stale lock is taken over, and planted links are refused."""
    from segbench.train.rundir import LOCK_NAME, claim

    run = tmp_path / "run"
    lock = claim(run)
    assert lock.read_text().split()[1] == str(os.getpid()) and claim(run) == lock  # held: kept
    lock.write_text(f"{socket.gethostname()} {_dead_pid()}\n")
    assert claim(run).read_text().split()[1] == str(os.getpid())  # stale: taken over
    lock.write_text(f"{socket.gethostname()} 1\n")  # a live process (init)
    with pytest.raises(SegbenchError, match="is in use by another segbench run"):
        claim(run)
    other = tmp_path / "other"
    other.mkdir()
    (other / ".hydra").symlink_to(tmp_path)
    with pytest.raises(SegbenchError, match=r"\.hydra is a symbolic link"):
        claim(other)
    assert not (other / LOCK_NAME).exists()


def test_a_second_run_started_into_a_busy_folder_changes_nothing_of_the_first(tiny_brats, tmp_path):
    import time

    from tests.conftest import SMALL

    run = tmp_path / "run"
    first_args = [
        f"data.root={tiny_brats}",
        *SMALL,
        "trainer.max_steps=100000",
        "trainer.val_every=100000",
        f"hydra.run.dir={run}",
        "seed=1",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "segbench", "train", *first_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (run / ".hydra" / "overrides.yaml").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        saved = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix in (".yaml", ".lock")}
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "segbench",
                "train",
                f"data.root={tiny_brats}",
                *SMALL,
                f"hydra.run.dir={run}",
                "seed=2",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "is in use by another segbench run" in second.stderr
        assert {p: p.read_bytes() for p in saved} == saved  # the first run's .hydra/ and lock untouched
    finally:
        first.kill()
        first.wait()


def test_a_run_folder_with_spaces_resumes_however_its_path_is_quoted(tiny_brats, tmp_path):
    from segbench import cli
    from tests.conftest import SMALL

    run = tmp_path / "my runs" / "run one"
    cli.main(["train", f"data.root={tiny_brats}", *SMALL, f"hydra.run.dir={run}"])
    steps = json.loads((run / "metrics.json").read_text())["steps"]
    for more, path in enumerate(
        [str(run), f"'{run}'", str(run).replace(" ", "\\ ")], start=1
    ):  # plain, quoted, escaped
        cli.main(["train", f"trainer.resume={path}", f"trainer.max_steps={steps + more}"])
        assert json.loads((run / "metrics.json").read_text())["steps"] == steps + more, path


def test_a_sweep_members_folder_resumes_from_its_path_as_printed(tiny_brats, tmp_path):
    """Sweep members are named like ``7_seed=1603,norm=batch``: Hydra's grammar reads the "=" and ","
    of the bare path as syntax, so segbench quotes it; the quoted form the user may type works too."""
    from segbench import cli
    from tests.conftest import SMALL

    run = tmp_path / "sweep" / "7_seed=1603,norm=batch"
    cli.main(["train", f"data.root={tiny_brats}", *SMALL, f"hydra.run.dir={run}"])
    steps = json.loads((run / "metrics.json").read_text())["steps"]
    for more, path in enumerate([str(run), f"'{run}'", f'"{run}"'], start=1):
        cli.main(["train", f"trainer.resume={path}", f"trainer.max_steps={steps + more}"])
        assert json.loads((run / "metrics.json").read_text())["steps"] == steps + more, path


@pytest.mark.parametrize("key", ["trainer.resume", "hydra.run.dir", "hydra.sweep.dir", "data.root"])
def test_path_values_are_quoted_only_where_hydra_would_misread_them(key, tmp_path):
    from segbench.config import parse_overrides
    from segbench.train.preflight import quote_path_values

    member = tmp_path / "7_seed=1603,norm=batch"
    folder_with_comma = tmp_path / "a,b"
    folder_with_comma.mkdir()
    kept = [f"{key}=/runs/plain", f"{key}=/a,/b", f"{key}='{member}'", f"{key}=${{oc.env:HOME}}/x", "seed=1,2"]
    for override in kept:  # plain, a sweep over paths, already quoted, an interpolation, not a path key
        assert quote_path_values([override], [override]) == ([override], [override])
    for path in (member, folder_with_comma):  # misread by the grammar; a folder that exists
        argv, overrides = quote_path_values(["-m", f"{key}={path}"], [f"{key}={path}"])
        assert argv == ["-m", overrides[0]] and overrides[0] != f"{key}={path}"
        assert parse_overrides(overrides)[0].value() == str(path)


def test_a_start_killed_before_its_first_checkpoint_leaves_no_stale_curve(tiny_cfg, tmp_path):
    from segbench.train.trainer import train

    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"stale")
    train(tiny_cfg(), run)
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].read_bytes() != b"stale"
