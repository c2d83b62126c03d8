"""Shared fixtures: a tiny brain phantom and the real config, shrunk to run in seconds."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from segbench import cli
from segbench.config import compose

# One torch thread per pytest-xdist worker (and per command a test starts: OMP_NUM_THREADS is
# inherited), so `make test`'s one worker per core does not ask for cores² threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

# The BraTS preprocessing cache of every test (and of the commands the tests start) goes to one
# throw-away folder, never to the user's ~/.cache.
os.environ["SEGBENCH_CACHE"] = tempfile.mkdtemp(prefix="segbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["SEGBENCH_CACHE"], True)


@pytest.fixture(autouse=True)
def _environment_restored():
    """A command run in-process (``cli.main``) sets variables for the processes it starts
    (SEGBENCH_SWEPT_KEYS, HYDRA_FULL_ERROR, ...): none may leak into the next test's commands."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def segbench_here(tmp_path, monkeypatch):
    """``segbench ARGS`` by ``cli.main`` in this process, from an empty folder (a command that wrongly
    got as far as writing a run would write it there, and the test's checks would see it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEGBENCH_OUTPUT", raising=False)

    def run(*args) -> subprocess.CompletedProcess:
        out, err, code, environment = io.StringIO(), io.StringIO(), 0, dict(os.environ)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main(list(args))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:  # what the command set for its children stays with it
            os.environ.clear()
            os.environ.update(environment)
        return subprocess.CompletedProcess(["segbench", *args], code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def tiny_brats(tmp_path_factory):
    """Six 2 mm phantom subjects (train 4, val 1, test 1) in the BraTS layout."""
    from segbench.data.brain_phantom import PhantomConfig, write_brain_phantom

    return write_brain_phantom(tmp_path_factory.mktemp("brats"), PhantomConfig(subjects=6, seed=3))[0]


TINY = [
    "model.width=4",
    "model.depth=3",
    "data.size=[48,48]",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "trainer.max_steps=3",
    "trainer.val_every=3",
    "trainer.checkpoint_every=1",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.log_images=2",
    "data.augment=true",
]


SMALL = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]


@pytest.fixture(scope="session")
def finished_run(tiny_brats, tmp_path_factory) -> Path:
    """A run trained by the command line (so it has .hydra/), two steps."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "segbench", "train", f"data.root={tiny_brats}", *SMALL, f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def tiny_cfg(tiny_brats):
    """``make_cfg(*overrides)``: the shipped config on the tiny phantom with a tiny model."""

    def make_cfg(*overrides):
        base = TINY
        if any(o.startswith("model=") for o in overrides):  # another model: drop the ResUNet's shape
            base = [o for o in TINY if not o.startswith("model.")]
        return compose([f"data.root={tiny_brats}", *base, *overrides])

    return make_cfg
