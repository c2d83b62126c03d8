"""A run directory has one writer at a time, and keeps nothing a failed start or a kill left behind.

The lock is a file holding the writer's host and pid. A second writer is refused in one line; a
lock whose process is gone (kill -9, a crashed node) is taken over, so a resume after a kill
needs no manual clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

from segbench.errors import SegbenchError
from segbench.train.restart import restart_count

LOCK_NAME = ".segbench.lock"
HYDRA_FILES = {".hydra", "app.log", LOCK_NAME}  # what is written into a run directory before segbench starts


def lock_holder(run_dir: Path) -> str | None:
    """``"pid N on HOST"`` of a live process holding ``run_dir``'s lock, or None (no lock, or a stale one)."""
    try:
        host, pid = (run_dir / LOCK_NAME).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        if restart_count():
            return None  # the cluster restarted this job (maybe on another node): the old holder is gone
        return f"pid {pid} on {host}"  # cannot tell whether it lives; the user can remove the lock file
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError):
        pass  # PermissionError: alive but someone else's
    return None if int(pid) == os.getpid() else f"pid {pid} on {host}"


def check_unlocked(run_dir: Path, key: str = "hydra.run.dir") -> None:
    holder = lock_holder(run_dir)
    if holder:
        raise SegbenchError(
            f"{run_dir} is in use by another segbench run ({holder}); wait for it to end, or "
            f"choose another {key} (a stale lock is {run_dir / LOCK_NAME})"
        )


def claim(run_dir: Path, key: str = "hydra.run.dir") -> Path:
    """Take ``run_dir``'s lock for this process (kept if it holds it already); refuse a live holder.

    Called before Hydra writes ``.hydra/`` into a named run folder, so a second run started at
    the same moment is refused before it has changed anything of the first one's.
    """
    check_unlocked(run_dir, key)
    for name in (".hydra", "app.log", LOCK_NAME, "checkpoints", "tb"):
        if (run_dir / name).is_symlink():
            raise SegbenchError(
                f"{run_dir / name} is a symbolic link; segbench writes only into real folders "
                "and files of the run: remove the link or choose another hydra.run.dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    try:
        if path.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]:
            return path
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)  # stale (checked above)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another run took it between the check and now
        check_unlocked(run_dir, key)
        raise SegbenchError(f"{run_dir} is in use by another segbench run") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
    return path


def release(lock: Path, created: bool = False) -> None:
    """Remove ``lock`` if this process holds it (a sweep's folder lock at the sweep's end), and the
    folder too when ``created`` (this process made it) and nothing else was written into it."""
    try:
        if lock.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]:
            lock.unlink()
        if created and not any(lock.parent.iterdir()):
            lock.parent.rmdir()  # a sweep refused after its lock (a bad launcher setting) leaves nothing
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` while training; refuse if a live process holds it, take over a stale lock."""
    path = claim(run_dir)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def remove_orphans(run_dir: Path) -> list[Path]:
    """Delete the temporary files of saves a kill interrupted (``.<name>.<random>.tmp``, see ``io``)."""
    orphans = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def remove_if_untouched(run_dir: Path) -> bool:
    """Remove a run directory that holds only what Hydra wrote before segbench refused the run."""
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    if not names <= HYDRA_FILES:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
