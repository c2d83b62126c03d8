"""DDP on CPU: syncbatch over 2 ranks x 4 images equals batch over 1 process x 8 images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segbench.models import build_model


def _model(norm):
    torch.manual_seed(0)
    return build_model("resunet", 2, 1, norm=norm, width=4, depth=2)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 2, 16, 16, generator=g), (torch.rand(8, 1, 16, 16, generator=g) > 0.5).float()


def _step(model, images, target):
    """One training step; returns the loss and the first BN layer's statistics and weight grad."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), target)
    loss.backward()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return loss.detach(), bn.running_mean.clone(), bn.running_var.clone(), conv.weight.grad.clone()


def _exit_now():
    """Leave without interpreter teardown: gloo's threads can abort a process at exit ("terminate called
    without an active exception", seen once in a loaded full-suite run) after its work is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank, world, init_file, norm, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, target = _data()
    model = torch.nn.parallel.DistributedDataParallel(_model(norm))
    loss, mean, var, grad = _step(model, images[4 * rank : 4 * rank + 4], target[4 * rank : 4 * rank + 4])
    dist.all_reduce(loss)  # each rank's mean over its 4 images; their average is the 8-image mean
    if rank == 0:
        torch.save({"loss": loss / world, "mean": mean, "var": var, "grad": grad}, out)
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
    _exit_now()


def _two_ranks(tmp_path, norm):
    out = tmp_path / f"{norm}.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / f"init-{norm}"), norm, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single_process():
    images, target = _data()
    loss, mean, var, grad = _step(_model("batch"), images, target)
    return {"loss": loss, "mean": mean, "var": var, "grad": grad}


def test_syncbatch_on_two_ranks_equals_batch_on_one(tmp_path, single_process):
    synced = _two_ranks(tmp_path, "syncbatch")
    for key in ("loss", "mean", "var", "grad"):
        torch.testing.assert_close(synced[key], single_process[key], atol=1e-5, rtol=1e-4)


def test_plain_batch_under_ddp_normalizes_each_rank_alone(tmp_path, single_process):
    local = _two_ranks(tmp_path, "batch")
    assert not torch.allclose(local["mean"], single_process["mean"], atol=1e-4)
    assert not torch.allclose(local["loss"], single_process["loss"], atol=1e-6)


def test_torchrun_writes_one_run_directory(tmp_path, tiny_brats):
    from tests.conftest import TINY

    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "segbench",
        "train",
        "norm=syncbatch",
        f"data.root={tiny_brats}",
        *TINY,
        "trainer.max_steps=5",
        "trainer.val_every=5",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8 and metrics["steps"] == 5


def _offset_worker(rank, world, init_file, offset, out):
    from segbench.nn.syncbn import SyncBatchNorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(2)) + offset
    y = SyncBatchNorm(3).train()(x[4 * rank : 4 * rank + 4])
    if rank == 0:
        torch.save(y.detach(), out)
    dist.barrier()
    dist.destroy_process_group()
    _exit_now()


@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_syncbatch_stays_exact_at_a_large_mean_offset(tmp_path, offset):
    """Variance from squared deviations, not E[x^2] - E[x]^2: no cancellation at a mean of 1000."""
    out = tmp_path / "y.pt"
    mp.spawn(_offset_worker, args=(2, str(tmp_path / "init"), offset, str(out)), nprocs=2, join=True)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(2)) + offset
    expected = torch.nn.BatchNorm2d(3).train()(x)[:4].detach()
    assert (torch.load(out, weights_only=True) - expected).abs().max() < 1e-4


def _pid_of_rank(rank: int, marker: str) -> int | None:
    """The pid of the torchrun worker of ``rank`` whose command line holds ``marker``."""
    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and f"\0RANK={rank}\0" in "\0" + (
                proc / "environ"
            ).read_bytes().decode(errors="replace"):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_lost_rank_ends_the_job_in_one_line_with_the_resume_command(tmp_path, tiny_brats, victim):
    """SIGKILL to one rank mid-run: the job ends, one line per failed rank, no traceback, and the
    printed command continues the run from its checkpoint."""
    import shlex
    import signal
    import time

    from tests.conftest import TINY

    run_dir = tmp_path / "run"
    train = [
        "norm=syncbatch",
        f"data.root={tiny_brats}",
        *TINY,
        "trainer.max_steps=600",
        "trainer.val_every=600",
        "trainer.checkpoint_every=5",
        f"hydra.run.dir={run_dir}",
    ]
    cmd = [sys.executable, "-m", "segbench", "torchrun", "--standalone", "--nproc_per_node=2", "train", *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    pid = _pid_of_rank(victim, str(run_dir))
    assert pid is not None and job.poll() is None, "the job ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    out, err = job.communicate(timeout=180)
    assert job.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("segbench torchrun:")]
    assert any(f"rank {victim} (local rank {victim}, pid {pid}) was killed by SIGKILL" in ln for ln in lines), err
    resume = next(ln for ln in lines if "resumes from its last checkpoint" in ln).split(": ", 2)[2]
    args = shlex.split(resume)[1:]
    assert f"trainer.resume={run_dir}" in args
    done = subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 600 and metrics["world_size"] == 2


@pytest.mark.slow
def test_torchrun_max_restarts_continues_the_run_from_its_checkpoint(tmp_path, tiny_brats):
    """A rank killed under --max-restarts=1: torchrun restarts every worker, and they continue the run
    from last.pt (TORCHELASTIC_RESTART_COUNT tells the restarted ranks) instead of refusing the folder."""
    import signal
    import time

    from tests.conftest import TINY

    run_dir = tmp_path / "run"
    train = [
        "norm=syncbatch",
        f"data.root={tiny_brats}",
        *TINY,
        "trainer.max_steps=600",
        "trainer.val_every=600",
        "trainer.checkpoint_every=5",
        f"hydra.run.dir={run_dir}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "segbench",
        "torchrun",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "train",
        *train,
    ]
    job = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    pid = _pid_of_rank(1, str(run_dir))
    assert pid is not None and job.poll() is None, "the job ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    log = (run_dir / "app.log").read_text()
    assert "resumed at step" in log, log[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 600


def test_a_refusal_under_segbench_torchrun_is_said_once(tmp_path, tiny_brats):
    """A bad command is refused by every rank's preflight; the job prints it once, exits 2, writes nothing."""
    from tests.conftest import TINY

    cmd = [
        sys.executable,
        "-m",
        "segbench",
        "torchrun",
        "--standalone",
        "--nproc_per_node=2",
        "train",
        f"data.root={tiny_brats}",
        *TINY,
        "data.batch_size=500",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "data.batch_size=500 x 2 rank(s) is more than the" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_rank_0_lost_in_an_unnamed_run_gives_its_line_and_the_resume_command_only(tmp_path, tiny_brats):
    """Rank 0 killed in a run Hydra named by the clock: one line for it and the resume command; no false
    syncbatch warning, no line from rank 1 (which only lost its peer), no "no checkpoint" beside last.pt."""
    import signal
    import time

    from tests.conftest import TINY

    out = tmp_path / "outputs"
    train = [
        "norm=syncbatch",
        f"data.root={tiny_brats}",
        *TINY,
        "trainer.max_steps=600",
        "trainer.val_every=600",
        "trainer.checkpoint_every=5",
    ]
    cmd = [sys.executable, "-m", "segbench", "torchrun", "--standalone", "--nproc_per_node=2", "train", *train]
    job = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SEGBENCH_OUTPUT": str(out)},
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("*/*/checkpoints/last.pt")) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    run_dir = next(out.glob("*/*/checkpoints/last.pt")).parent.parent
    pid = _pid_of_rank(0, f"data.root={tiny_brats}")
    assert pid is not None and job.poll() is None
    os.kill(pid, signal.SIGKILL)
    _, err = job.communicate(timeout=180)
    lines = [line for line in err.splitlines() if line.strip()]
    assert job.returncode == 1 and len(lines) == 2, err
    assert f"rank 0 (local rank 0, pid {pid}) was killed by SIGKILL" in lines[0]
    assert f"trainer.resume={run_dir}" in lines[1]
