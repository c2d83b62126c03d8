"""Stopping cleanly when the cluster asks: a checkpoint at the next step, then the exit it expects.

SLURM warns a job before preempting it or at its time limit (``--signal=USR2@90`` through
submitit, or SIGTERM before the kill); torchrun forwards SIGTERM to its workers. A signal here
only raises a flag: the training loop reads it between steps (all ranks agree through the
step's all-reduce), writes ``checkpoints/last.pt`` at that step and stops before the test
evaluation. Then the handler that was there before ours runs, so submitit still requeues the job
through Hydra's launcher (whose ``checkpoint()`` resubmits the same member); without one the run
exits with 128 + the signal's number. A requeued or restarted run continues from that checkpoint
(``segbench.train.restart``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from segbench.train.checkpoint import resume_hint

# SIGUSR2 is what submitit asks SLURM to send before a time-out or preemption; SIGUSR1 is the
# usual choice of hand-written SLURM scripts; SIGTERM is what scancel, preemption and torchrun send.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """The run stopped at a signal after saving ``checkpoint``; resume continues from it."""

    def __init__(self, signum: int, step: int, checkpoint, run_dir) -> None:
        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, checkpoint, run_dir
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; saved {checkpoint}; "
            f"continue it with the same command (a sweep continues its unfinished members; a requeued job "
            f"does so by itself) or with segbench train {resume_hint(run_dir)}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """While entered, the stop signals set ``signum`` instead of ending the process.

    Signal handlers can only be installed from the main thread; a run trained in another thread
    (packed seeds) keeps the process's handlers and is stopped by them.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals, self.signum, self._previous = signals, None, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def hand_on(self, stopped: Preempted) -> None:
        """After the checkpoint: the handler that was there before (submitit's requeue), else raise."""
        previous = self._previous.get(stopped.signum)
        self.__exit__()
        # segbench's own stop-the-children handler (segbench.children) is not a cluster's: the run has
        # saved its checkpoint and says so itself (and any children of it stop with this process).
        if callable(previous) and not getattr(previous, "segbench_children", False):  # not SIG_DFL / SIG_IGN
            previous(stopped.signum, None)
        raise stopped
