"""The battery of bad input and faults: each case ends in one line on stderr, exit code 2, no
traceback, and nothing written or changed anywhere under the test's folder.

Cases run ``segbench.cli.main`` in this process (a subprocess per case would cost minutes); a
case that wrongly got as far as training would train here and fail the ``exit 2`` check.
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from segbench import cli
from segbench.config import group_options
from segbench.errors import SegbenchError
from tests.bad_input_cases import CASES
from tests.breakage import EvilPickle, Where, snapshot
from tests.conftest import SMALL


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tiny_brats, finished_run, tmp_path, monkeypatch, capsys):
    _, setup, argv, fragments = case
    where = Where(tmp_path, tiny_brats, finished_run)
    setup(where)
    argv = [where.fill(a) for a in argv]
    needs_data = argv[0] == "train" and not any(a.startswith(("trainer.resume=", "data.root=")) for a in argv)
    if needs_data:
        small = [o for o in SMALL if not o.startswith("model.")] if any(a.startswith("model=") for a in argv) else SMALL
        argv = [argv[0], f"data.root={where.brats}", *small, *argv[1:]]
    monkeypatch.chdir(tmp_path)  # a run without hydra.run.dir would land in ./outputs here
    monkeypatch.delenv("SEGBENCH_OUTPUT", raising=False)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_resuming_a_finished_run_exits_0_and_changes_nothing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    cli.main(["train", f"trainer.resume={run}"])
    assert "is finished" in capsys.readouterr().out
    assert snapshot(run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tiny_brats, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", f"data.root={tiny_brats}", *SMALL, f"hydra.run.dir={locked / 'run'}"])
        assert exit_info.value.code == 2
        assert "cannot write" in capsys.readouterr().err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_unsafe_checkpoint_never_runs_its_code(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "checkpoints" / "last.pt", "wb") as handle:
        pickle.dump({"model": EvilPickle()}, handle)
    with pytest.raises(SystemExit):
        cli.main(["train", f"trainer.resume={run}", "trainer.max_steps=4"])
    assert "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_shipped_experiment_passes_the_checks(experiment):
    from segbench.config import compose
    from segbench.schema import check_config

    check_config(compose([f"experiment={experiment}"]))


@pytest.mark.parametrize("key", ["trainer.compile", "trainer.channels_last", "data.cache"])
def test_flags_set_as_text_outside_the_command_line_are_one_line(key):
    """A YAML file or the Python API can hand a flag as text; the rule table refuses it by name."""
    from omegaconf import OmegaConf

    from segbench.config import compose
    from segbench.schema import check_config

    cfg = compose([])
    OmegaConf.update(cfg, key, "yes", force_add=True)
    with pytest.raises(SegbenchError, match=rf"{key}='yes' must be true or false"):
        check_config(cfg)
