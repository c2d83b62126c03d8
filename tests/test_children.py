"""No process of segbench outlives the command that started it (segbench.children)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from segbench.children import descendants
from tests.conftest import TINY


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_descendants_finds_grandchildren():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
        ]
    )
    try:
        assert _wait_for(lambda: len(descendants(child.pid)) == 1, 20)
        assert child.pid in descendants()
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_sigterm_to_a_parallel_sweep_leaves_no_worker_behind(tiny_brats, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))]
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segbench",
            "train",
            "-m",
            f"data.root={tiny_brats}",
            *overrides,
            "trainer.max_steps=100000",
            "trainer.val_every=100000",
            "norm=none,batch",
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = _wait_for(lambda: len(list(sweep.glob("*/checkpoints/last.pt"))) == 2, 240)
        assert started, parent.stderr.read() if parent.poll() is not None else "the sweep's runs did not start"
        workers = descendants(parent.pid)
        assert workers
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 128 + signal.SIGTERM, err
    assert "segbench: stopped by SIGTERM; stopped its" in err
    assert "Traceback" not in err and "leaked" not in err
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 30), [p for p in workers if _alive(p)]
    assert len(list(sweep.glob("*/checkpoints/last.pt"))) == 2  # each run saved where it stopped
