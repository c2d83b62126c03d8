"""Atomic writes: a crash or a kill never leaves a half-written checkpoint, metrics or report."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from segbench.errors import SegbenchError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    The temporary file lives in the destination folder so that ``os.replace`` stays on one
    file system and is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    try:
        return atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except RuntimeError as err:
        # torch's zip writer reports a failed write (a full disk, a quota) as RuntimeError, without errno.
        full = shutil.disk_usage(Path(path).parent).free < 2**20
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, f"{os.strerror(code)} ({str(err).splitlines()[0]})", str(path)) from None


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)``, with a truncated, foreign or unsafe file as one line."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before refusing it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise SegbenchError(
                f"refused to load {path}: it holds Python objects besides tensors and numbers, "
                "and unpickling them could run arbitrary code; segbench opens only plain "
                "checkpoints (as it writes them)"
            ) from None
        raise SegbenchError(f"cannot read {path}: it is corrupt or not a torch checkpoint") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and struct each fail their own way on junk
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegbenchError(f"cannot read {path}: truncated or not a torch checkpoint ({reason})") from None


def save_figure(path: str | os.PathLike, fig) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:], dpi=120, bbox_inches="tight"))


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder that cannot be created or written (read-only, no permission, disk full)."""
    base = nearest_existing(folder)
    if not base.is_dir():
        raise SegbenchError(f"{what}={folder}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SegbenchError(
            f"{what}={folder}: cannot write in {base} ({os.strerror(errno.EACCES)} or a read-only file system)"
        )
    if shutil.disk_usage(base).free < 16 * 2**20:
        raise SegbenchError(f"{what}={folder}: {os.strerror(errno.ENOSPC)} in {base} (under 16 MiB free)")
