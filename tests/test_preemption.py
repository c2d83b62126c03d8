"""A cluster's stop signal: checkpoint at the step, exit as the launcher expects, continue exactly.

Also: a requeued or re-run sweep continues its unfinished members, leaves finished ones as they are,
and refuses (before Hydra writes anything) a folder whose runs were trained with other settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from segbench.train.preemption import Preempted, StopRequest
from segbench.train.trainer import train
from tests.conftest import SMALL


def test_a_stop_signal_only_raises_the_flag_then_the_previous_handler_runs():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.signum == signal.SIGUSR1 and seen == []  # the process goes on
            with pytest.raises(Preempted) as stopped:
                stop.hand_on(Preempted(signal.SIGUSR1, 5, "last.pt", "run"))
        assert seen == [signal.SIGUSR1]  # e.g. submitit's requeue, after the checkpoint
        assert stopped.value.exit_code == 128 + signal.SIGUSR1
        assert signal.getsignal(signal.SIGUSR1) is not stop._handle  # handlers put back
    finally:
        signal.signal(signal.SIGUSR1, previous)


# FCN-8s has dropout: its masks come from torch's global RNG, which the resumed run must continue
# exactly where the checkpoint left it (a DataLoader draws from it when it starts iterating).
@pytest.mark.parametrize(
    "model", [[], ["model=fcn8s", "model.width=0.0625", "data.size=[32,32]"]], ids=["resunet", "fcn8s-dropout"]
)
def test_a_signal_saves_last_pt_at_that_step_and_the_resume_is_exact(tiny_cfg, tmp_path, model):
    steps = [*model, "trainer.max_steps=8", "trainer.val_every=4", "trainer.checkpoint_every=100"]
    full = train(tiny_cfg(*steps), tmp_path / "full")

    def signal_after_step_3(done):
        if done == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted) as stopped:
        train(tiny_cfg(*steps), tmp_path / "cut", after_step=signal_after_step_3)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 4  # read at the next step
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 4
    assert not (tmp_path / "cut" / "metrics.json").exists()  # no test evaluation of an unfinished run
    resumed = train(tiny_cfg(*steps, "trainer.resume=true"), tmp_path / "cut")
    assert resumed["steps"] == 8
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    assert resumed["test"]["best"]["dice"] == pytest.approx(full["test"]["best"]["dice"], abs=1e-4)


def _segbench(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_sigterm_to_a_sweep_member_exits_143_with_one_line_and_the_same_command_continues(tiny_brats, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        f"data.root={tiny_brats}",
        *SMALL,
        "trainer.max_steps=100000",
        "trainer.val_every=1000",
        "trainer.checkpoint_every=1000",
        "seed=5",
        f"hydra.sweep.dir={sweep}",
    ]

    process = subprocess.Popen(
        [sys.executable, "-m", "segbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not list(sweep.glob("0_*/tb")) and time.time() < deadline:  # training has started
        time.sleep(0.2)
    member = next(sweep.glob("0_*"))
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith("segbench:")]
    assert len(lines) == 1 and "stopped by SIGTERM at step" in lines[0] and "Traceback" not in err
    stopped_at = torch.load(member / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert stopped_at >= 1
    again = _segbench(*[a.replace("trainer.max_steps=100000", f"trainer.max_steps={stopped_at + 2}") for a in args])
    assert again.returncode == 0, again.stderr
    assert f"1 unfinished (continued from last.pt: {member.name})" in again.stdout
    assert f"resumed at step {stopped_at} of {stopped_at + 2}" in (member / "app.log").read_text()


def test_the_same_sweep_again_leaves_finished_members_and_refuses_other_settings(tiny_brats, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", f"data.root={tiny_brats}", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert _segbench(*args).returncode == 0
    saved = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.name != "multirun.yaml"}
    again = _segbench(*args)
    assert again.returncode == 0, again.stderr
    assert "holds 2 of its 2 members: 2 finished (left as they are)" in again.stdout
    events = list((sweep / "0_seed=0" / "tb").glob("events.*"))
    assert len(events) == 1  # not trained again
    other = _segbench(*args, "model.width=6")
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0 and "trained with other settings (model.width)" in other.stderr
    for path, content in saved.items():  # nothing of the finished runs changed, .hydra/ included
        if path.name != "app.log":
            assert path.read_bytes() == content, path


def test_a_requeued_single_run_continues_where_a_fresh_start_is_refused(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    overrides = [str(o) for o in __import__("omegaconf").OmegaConf.load(run / ".hydra" / "overrides.yaml")]
    fresh = _segbench("train", *overrides, f"hydra.run.dir={run}")
    assert fresh.returncode == 2 and "already holds a run" in fresh.stderr
    requeued = _segbench("train", *overrides, f"hydra.run.dir={run}", env={"SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr
    assert "is finished" in requeued.stdout + requeued.stderr


def test_the_sweep_report_names_each_member_that_did_not_finish(tmp_path):
    from segbench.train.restart import member_status, sweep_report

    jobs = [["norm=batch"], ["norm=group"], ["norm=none"]]
    (tmp_path / "0_norm=batch").mkdir()
    (tmp_path / "0_norm=batch" / "metrics.json").write_text('{"test": {}, "steps": 4}')
    (tmp_path / "1_norm=group" / "checkpoints").mkdir(parents=True)
    torch.save({"step": 7}, tmp_path / "1_norm=group" / "checkpoints" / "last.pt")
    assert member_status(tmp_path / "1_norm=group") == "unfinished (last.pt at step 7)"
    assert member_status(tmp_path / "2_norm=none") == "not started"
    lost = RuntimeError(
        "A worker process managed by the executor was unexpectedly terminated. The exit codes of "
        "the workers are {SIGKILL(-9)}"
    )
    lines = sweep_report(tmp_path, jobs, lambda job: job[0], lost)
    assert lines[:2] == [
        "segbench: sweep member 1_norm=group: unfinished (last.pt at step 7)",
        "segbench: sweep member 2_norm=none: not started",
    ]
    assert "exit codes {SIGKILL(-9)}" in lines[2] and "1 of 3 members finished" in lines[2]
    assert len(sweep_report(tmp_path, jobs[:1], lambda job: job[0])) == 1  # all finished: the summary only


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_worker_of_a_parallel_sweep_is_reported_and_the_same_command_continues(tiny_brats, tmp_path, sig):
    """SIGTERM: that member saves and stops, the other finishes; SIGKILL: joblib stops both. Either
    way one line per unfinished member, a summary, exit 1, no traceback; the same command then ends
    the sweep."""
    sweep = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        "norm=batch,instance",
        f"data.root={tiny_brats}",
        *SMALL,
        "trainer.max_steps=150",
        "trainer.val_every=150",
        "trainer.checkpoint_every=5",
        "trainer.precision=32",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "segbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 240
    while not list(sweep.glob("1_*/checkpoints/last.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    workers = subprocess.run(
        ["pgrep", "-P", str(process.pid), "-f", "LokyProcess"], capture_output=True, text=True
    ).stdout.split()
    assert workers and process.poll() is None, "the sweep ended before a worker could be stopped"
    os.kill(int(workers[-1]), sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "resource_tracker" not in err, err[-2000:]
    summary = [line for line in err.splitlines() if "the sweep ended early" in line]
    assert len(summary) == 1 and "of 2 members finished" in summary[0]
    assert any(line.startswith("segbench: sweep member ") and "unfinished" in line for line in err.splitlines())
    again = subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert all((member / "metrics.json").is_file() for member in sweep.glob("[01]_*"))
