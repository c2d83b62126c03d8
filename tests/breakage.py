"""What the bad-input cases break and how: copies of the tiny phantom and of a finished run made on
first use (``Where``), edits that corrupt a NIfTI, a PNG, a checkpoint or a config folder, and a
snapshot of a folder's files to prove a refused command changed nothing. The cases themselves are in
``bad_input_cases``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from segbench.data.voc_phantom import write_voc_phantom


class Where:
    """The folders one case may break: a copy of the tiny phantom, of a finished run, and scratch.

    Each copy is made on first use, so a case pays only for what it touches.
    """

    def __init__(self, tmp: Path, brats_source: Path, run_source: Path):
        self.tmp, self._sources, self._copied = tmp, {"brats": brats_source, "run": run_source}, set()

    def _copy(self, name: str) -> Path:
        path = self.tmp / name
        if name not in self._copied:  # once: a case may delete the copy on purpose
            shutil.copytree(self._sources[name], path)
            self._copied.add(name)
        return path

    def fill(self, arg: str) -> str:
        for name, folder in (("{brats}", lambda: self.brats), ("{run}", lambda: self.run), ("{tmp}", lambda: self.tmp)):
            if name in arg:
                arg = arg.replace(name, str(folder()))
        return arg

    @property
    def brats(self) -> Path:
        return self._copy("brats")

    @property
    def run(self) -> Path:
        return self._copy("run")


def edit_nifti(path: Path, change: Callable[[np.ndarray], np.ndarray], dtype=None) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).copy())
    out = nib.Nifti1Image(data.astype(dtype or data.dtype), image.affine)
    nib.save(out, path)


def subject(where: Where) -> tuple[Path, str]:
    folder = sorted(p for p in where.brats.iterdir() if p.is_dir())[0]
    return folder, folder.name


def file(where: Where, suffix: str) -> Path:
    folder, sid = subject(where)
    return folder / f"{sid}_{suffix}.nii.gz"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_label(value, dtype=np.int16):
    def change(seg):
        seg = seg.astype(dtype)
        seg[tuple(s // 2 for s in seg.shape)] = value
        return seg

    return lambda w: edit_nifti(file(w, "seg"), change, dtype)


def set_zooms(where: Where, zooms) -> None:
    """One subject's every file given voxels of ``zooms`` mm, the others kept as they are."""
    folder, _ = subject(where)
    for path in folder.glob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([*zooms, 1.0])), path)


def set_voxels(suffix, value):
    def change(image):
        image = image.astype(np.float32)
        image[tuple(s // 2 for s in image.shape)] = value
        return image

    return lambda w: edit_nifti(file(w, suffix), change)


def all_zero(suffix):
    return lambda w: edit_nifti(file(w, suffix), lambda image: np.zeros_like(image))


def other_shape(suffix):
    return lambda w: edit_nifti(file(w, suffix), lambda image: image[:-2])


def folder_data(where: Where, bad_value: int | None = None, corrupt: bool = False) -> Path:
    root = where.tmp / "folder"
    rng = np.random.default_rng(0)
    for patient in ("p1", "p2", "p3", "p4"):
        (root / patient).mkdir(parents=True)
        for k in range(2):
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 255
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / patient / f"{patient}_{k}.png")
            Image.fromarray(mask).save(root / patient / f"{patient}_{k}_mask.png")
    if bad_value is not None:
        mask = np.zeros((32, 32), np.uint8)
        mask[1, 1] = bad_value
        Image.fromarray(mask).save(root / "p2" / "p2_1_mask.png")
    if corrupt:
        (root / "p3" / "p3_0_mask.png").write_bytes(b"not a png")
    return root


def truncate_image(where: Where) -> Path:
    root = folder_data(where)
    truncate(root / "p4" / "p4_1.png", 0.6)
    return root


def voc(where: Where) -> Path:
    return write_voc_phantom(where.tmp / "voc", images=6)


# FCN-8s on the small VOC phantom written by ``voc``.
VOC_RUN = ["train", "model=fcn8s", "model.width=0.0625", "data=voc_phantom", "data.root={tmp}/voc", "data.size=[64,64]"]


def voc_with_class(where: Where, value: int) -> Path:
    root = voc(where)
    mask_path = sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))[0]
    mask = Image.open(mask_path)
    array = np.asarray(mask).copy()
    array[0, 0] = value
    out = Image.fromarray(array, mode="P")
    out.putpalette(mask.getpalette())
    out.save(mask_path)
    return root


def write_last(where: Where, payload: bytes) -> None:
    (where.run / "checkpoints" / "last.pt").write_bytes(payload)


class EvilPickle:
    def __reduce__(self):
        return (print, ("this ran",))


def unsafe_checkpoint(where: Where) -> None:
    torch.save({"model": EvilPickle()}, where.run / "checkpoints" / "last.pt")


def lock_by_live_process(where: Where) -> None:
    import socket

    (where.run / ".segbench.lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")


def nothing(where: Where) -> None:
    pass


def study_declared(where: Where) -> None:
    """A study folder whose study.json declares 20 seeds at most (segbench study's defaults)."""
    import json

    (where.tmp / "study").mkdir()
    (where.tmp / "study" / "study.json").write_text(
        json.dumps(
            {
                "first": 4,
                "per_round": 4,
                "max_seeds": 20,
                "start_seed": 0,
                "looks": 5,
                "alpha": 0.05,
                "margin": 0.02,
                "overrides": ["norm=none,batch"],
            }
        )
    )


def config_folder(yaml_text: str, name: str = "mine") -> Callable[[Where], None]:
    """A shared config folder with one experiment file (``-cd {tmp}/cfg experiment=mine``)."""

    def write(where: Where) -> None:
        (where.tmp / "cfg" / "experiment").mkdir(parents=True, exist_ok=True)
        (where.tmp / "cfg" / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + yaml_text)

    return write


CALLBACK = "hydra:\n  callbacks:\n    x:\n      _target_: shutil.copyfile\n      src: a\n      dst: b\n"


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in root.rglob("*")
    }
