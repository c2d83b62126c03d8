"""The command line: one-line errors with exit code 2, and runs from any directory.

Commands that stop before training run ``cli.main`` in this process (conftest's ``segbench_here``):
the same exit code and streams, without the 2-3 s a new interpreter spends importing torch and
Hydra. Commands that train, or whose working directory matters, run as real commands (``segbench``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segbench.config import compose, group_options
from tests.conftest import TINY


def segbench(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_norm_lists_valid_names(segbench_here):
    assert_one_line_error(segbench_here("train", "norm=nosuch"), "norm='nosuch'", "batch", "group", "spade")


def test_unknown_norm_in_a_sweep_is_caught_before_launch(segbench_here, tmp_path):
    assert_one_line_error(segbench_here("train", "-m", "norm=batch,nosuch"), "nosuch")
    assert os.listdir(tmp_path) == []


def test_group_count_that_does_not_divide_the_width(tiny_brats, segbench_here):
    result = segbench_here(
        "train", f"data.root={tiny_brats}", "norm=group", "norm.num_groups=7", "model.width=8", "trainer.device=cpu"
    )
    assert_one_line_error(result, "num_groups=7", "8 channels")


def test_option_the_norm_does_not_take(segbench_here):
    assert_one_line_error(segbench_here("train", "norm=instance", "norm.num_groups=2"), "num_groups", "eps", "affine")


def test_missing_data_folder_says_how_to_make_it(tmp_path, segbench_here):
    result = segbench_here("train", f"data.root={tmp_path / 'absent'}", "trainer.device=cpu")
    assert_one_line_error(result, "absent", "segbench make-data brain-phantom")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.test_fraction=0.9", "leaves no subject"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5"),
        ("study.lr_grid=[1e-3,-1]", "positive"),
        ("study.lr_grid=[abc]", "abc"),
    ],
)
def test_bad_split_or_lr_grid_is_refused_before_any_file(tmp_path, override, fragment, segbench_here):
    result = segbench_here("train", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_bad_device_value(segbench_here):
    assert_one_line_error(segbench_here("train", "trainer.device=tpu"), "tpu", "auto", "cpu", "cuda")


def test_modality_shape_mismatch_names_subject_and_shapes(tmp_path, tiny_brats, segbench_here):
    import shutil

    import nibabel as nib
    import numpy as np

    root = tmp_path / "brats"
    shutil.copytree(tiny_brats, root)
    subject = sorted(p for p in root.iterdir() if p.is_dir())[0]
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)), subject / f"{subject.name}_t2.nii.gz")
    result = segbench_here("train", f"data.root={root}", "trainer.device=cpu")
    assert_one_line_error(result, subject.name, "(10, 10, 10)")


def test_unknown_command(segbench_here):
    result = segbench_here("nosuch")
    assert result.returncode == 2 and "train" in result.stderr


def test_train_runs_from_any_directory(tmp_path, tiny_brats):
    result = segbench("train", f"data.root={tiny_brats}", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def test_make_data_writes_brats_layout(tmp_path, segbench_here):
    result = segbench_here("make-data", "brain-phantom", "--out", str(tmp_path / "p"), "--subjects", "1")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "p" / "BraTS2021_00000").iterdir())
    assert names == [f"BraTS2021_00000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]


@pytest.mark.parametrize("args", [["make-data", "nosuch", "--out", "x"], ["make-data", "brain-phantom"]])
def test_make_data_bad_arguments(args, segbench_here, tmp_path):
    assert segbench_here(*args).returncode == 2 and os.listdir(tmp_path) == []


def test_text_where_a_number_belongs(segbench_here):
    assert_one_line_error(segbench_here("train", "data.batch_size=abc"), "data.batch_size='abc'", "int")


def test_input_size_the_depth_cannot_halve_fails_before_writing(tmp_path, tiny_brats, segbench_here):
    run = tmp_path / "run"
    result = segbench_here(
        "train", f"data.root={tiny_brats}", "data.size=[97,131]", "trainer.device=cpu", f"hydra.run.dir={run}"
    )
    assert_one_line_error(result, "97x131", "divisible by 8")
    assert not (run / "tb").exists()


# Each norm's own maths is tested in-process (test_models, test_norm_formulas); here its config
# file meets the command line. Four cover the kinds (none, batch statistics, group, conditional).
FAST_NORMS = {"none", "batch", "group", "spade"}


@pytest.mark.parametrize(
    "norm", [n if n in FAST_NORMS else pytest.param(n, marks=pytest.mark.slow) for n in group_options("norm")]
)
def test_every_norm_trains_from_the_command_line(norm, tiny_brats, tmp_path):
    shipped = compose([f"norm={norm}"]).norm  # shrink what the tiny model's 4 channels cannot hold
    options = [o for key, o in (("num_groups", "norm.num_groups=2"), ("hidden", "norm.hidden=8")) if key in shipped]
    result = segbench("train", f"norm={norm}", *options, f"data.root={tiny_brats}", *TINY, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "metrics.json").exists()


def test_conditional_norm_on_one_modality(tiny_brats, tmp_path):
    result = segbench(
        "train",
        "norm=spade",
        "norm.hidden=8",
        "norm.cond_channels=[flair]",
        "norm.inner=instance",
        f"data.root={tiny_brats}",
        *TINY,
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "argv, overrides",
    [
        (["--cfg", "job", "norm=group"], ["norm=group"]),
        (["-c", "job"], []),
        (["--info", "defaults", "seed=1"], ["seed=1"]),
        (["--info", "seed=1"], ["seed=1"]),
        (["-m", "norm=none,batch"], ["norm=none,batch"]),
        (["-cn", "other", "-cp", "/x", "a=1"], ["a=1"]),
        (["--cfg=job", "--package=_global_", "b=2"], ["b=2"]),
        (["--cfg", "job", "--resolve", "seed=3"], ["seed=3"]),
        (["-sc", "install=bash"], []),
    ],
)
def test_hydra_flags_and_their_values_are_not_read_as_overrides(argv, overrides):
    from segbench.train_command import split_hydra_args

    assert split_hydra_args(argv)[0] == overrides


def test_cfg_job_prints_the_composed_config(segbench_here):
    result = segbench_here("train", "--cfg", "job", "norm=group")
    assert result.returncode == 0, result.stderr
    assert "name: group" in result.stdout and "lr_grid" in result.stdout


def test_version_and_a_closed_pipe():
    result = segbench("--version")
    assert result.returncode == 0 and result.stdout.startswith("segbench ")
    pipe = subprocess.run(f"{sys.executable} -m segbench -h | head -1", shell=True, capture_output=True, text=True)
    assert pipe.returncode == 0 and "Traceback" not in pipe.stderr and "BrokenPipe" not in pipe.stderr


def test_progress_bars_only_on_a_terminal(capsys, monkeypatch):
    import sys

    from segbench.progress import progress

    assert list(progress(range(3), "loading")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # off a terminal: silent, so an error stays one line
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert list(progress(range(3), "loading", 3)) == [0, 1, 2]
    assert "loading" in capsys.readouterr().err
