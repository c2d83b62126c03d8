"""No process of segbench outlives the command that started it.

A parallel sweep (Hydra's joblib launcher: loky worker processes), ``segbench study`` and
``segbench bench`` (which start ``segbench train -m`` themselves) run their work in child
processes. Python's default answer to SIGTERM ends the parent at once and leaves those children
computing, adopted by init, for as long as their runs last. So the commands that start children
answer SIGTERM (and Ctrl-C) by passing the signal on to every descendant, which checkpoints a
training run at its next step (``segbench.train.preemption``) and ends an idle worker, waiting for
them to go (killing what is left after ``GRACE_S``), and only then exit with 128 + the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 120.0  # long enough for a run to finish its step (a validation included) and save last.pt


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), read from /proc; empty where there is none."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
        if fields and fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        below = [p for p, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _waited_for(pid: int) -> bool:
    """False for the resource trackers of multiprocessing and loky: they ignore SIGTERM by design and
    end by themselves once this process has gone (their pipe to it closes)."""
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop_descendants(signum: int = signal.SIGTERM, grace_s: float = GRACE_S) -> int:
    """Pass ``signum`` on to every descendant until all are gone (SIGKILL after ``grace_s``);
    returns how many there were."""
    started, seen = time.monotonic(), set()
    while True:
        alive = [pid for pid in descendants() if _waited_for(pid)]
        if not alive:
            return len(seen)
        seen.update(alive)
        if time.monotonic() - started > grace_s:
            _signal_all(alive, signal.SIGKILL)
        else:
            # Again each round: a worker whose run saved its checkpoint goes back to waiting for work
            # with the default handler, and this ends it.
            _signal_all(alive, signum)
        time.sleep(0.5)


def _on_signal(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal while the children stop changes nothing
    n = stop_descendants(signal.SIGTERM)
    name = signal.Signals(signum).name
    print(
        f"segbench: stopped by {name}"
        + (
            f"; stopped its {n} worker process(es) (a run among them saves "
            "last.pt first: the same command continues it)"
            if n
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum)  # not os._exit: joblib and loky release their shared memory on the way out


_on_signal.segbench_children = True  # StopRequest.hand_on does not call it: a run stopping says so itself


def stop_children_on_signals() -> None:
    """From now on SIGTERM ends this process only after its descendants (main thread only)."""
    signal.signal(signal.SIGTERM, _on_signal)
