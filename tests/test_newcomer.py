"""The newcomer's path: train --help at once, --check before a long sweep, Tab completion that works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segbench.completion import candidates
from segbench.config import GROUPS, group_options
from tests.conftest import TINY
from tests.test_cli import assert_one_line_error, segbench


def test_train_help_lists_every_group_with_its_choices_without_importing_torch():
    code = (
        "import sys; from segbench.cli import main; main(['train', '--help']); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: segbench train") and "powered by Hydra" not in result.stdout
    for group in GROUPS:
        assert f"  {group:<11} {', '.join(group_options(group))}" in result.stdout
    assert result.stdout.strip().endswith("no torch")


def test_check_runs_every_arm_one_step_and_writes_nothing(tiny_brats, tmp_path):
    out = tmp_path / "sweep"
    result = segbench(
        "train",
        "--check",
        "-m",
        f"data.root={tiny_brats}",
        *TINY,
        "norm=batch,instance",
        "seed=0,1",
        f"hydra.sweep.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checked:" in result.stdout and "nothing was written" in result.stdout
    assert not out.exists()
    run = tmp_path / "run"
    result = segbench("train", "--check", f"data.root={tiny_brats}", *TINY, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not run.exists()  # neither the folder nor its lock


def test_check_refuses_what_training_would_refuse(tiny_brats, tmp_path):
    result = segbench(
        "train",
        "--check",
        f"data.root={tiny_brats}",
        *TINY,
        "norm=group",
        "norm.num_groups=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(result, "num_groups")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "word, expected",
    [
        ("norm=gr", ["norm=grn ", "norm=group "]),
        ("hydra/launcher=pa", ["hydra/launcher=packed ", "hydra/launcher=parallel "]),
        ("trainer.max_s", ["trainer.max_steps="]),
        ("data.batch", ["data.batch_size="]),
        ("logger=ml", ["logger=mlflow "]),
        ("--ch", ["--check"]),
    ],
)
def test_tab_completes_choices_and_keys_of_train(word, expected):
    assert candidates("train", word, 2, ["train", "compare"]) == expected


def test_tab_completes_subcommands_and_the_script_binds_one_command():
    assert candidates("", "co", 1, ["train", "compare", "completion"]) == ["compare ", "completion "]
    script = segbench("completion", "bash")
    assert script.returncode == 0 and script.stdout.strip().endswith("-F _segbench_complete segbench")
    done = subprocess.run(
        [
            "bash",
            "-c",
            script.stdout
            + f'''
        segbench() {{ {sys.executable} -m segbench "$@"; }}
        COMP_LINE="segbench train norm=gr"; COMP_POINT=${{#COMP_LINE}}
        COMP_WORDS=(segbench train norm = gr); COMP_CWORD=4
        _segbench_complete; printf "%s|" "${{COMPREPLY[@]}}"''',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "grn |group |", done.stderr
