"""The bad inputs and faults of ``test_bad_input``, as data: what each case breaks, the command it
runs, and the words its one-line error must hold. Helpers that break a phantom or a run live here
beside the cases that use them.
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


def _edit_nifti(path: Path, change: Callable[[np.ndarray], np.ndarray], dtype=None) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).copy())
    out = nib.Nifti1Image(data.astype(dtype or data.dtype), image.affine)
    nib.save(out, path)


def _subject(where: Where) -> tuple[Path, str]:
    folder = sorted(p for p in where.brats.iterdir() if p.is_dir())[0]
    return folder, folder.name


def _file(where: Where, suffix: str) -> Path:
    folder, sid = _subject(where)
    return folder / f"{sid}_{suffix}.nii.gz"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _set_label(value, dtype=np.int16):
    def change(seg):
        seg = seg.astype(dtype)
        seg[tuple(s // 2 for s in seg.shape)] = value
        return seg

    return lambda w: _edit_nifti(_file(w, "seg"), change, dtype)


def _set_zooms(where: Where, zooms) -> None:
    """One subject's every file given voxels of ``zooms`` mm, the others kept as they are."""
    folder, _ = _subject(where)
    for path in folder.glob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([*zooms, 1.0])), path)


def _set_voxels(suffix, value):
    def change(image):
        image = image.astype(np.float32)
        image[tuple(s // 2 for s in image.shape)] = value
        return image

    return lambda w: _edit_nifti(_file(w, suffix), change)


def _all_zero(suffix):
    return lambda w: _edit_nifti(_file(w, suffix), lambda image: np.zeros_like(image))


def _other_shape(suffix):
    return lambda w: _edit_nifti(_file(w, suffix), lambda image: image[:-2])


def _folder_data(where: Where, bad_value: int | None = None, corrupt: bool = False) -> Path:
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


def _truncate_image(where: Where) -> Path:
    root = _folder_data(where)
    truncate(root / "p4" / "p4_1.png", 0.6)
    return root


def _voc(where: Where) -> Path:
    return write_voc_phantom(where.tmp / "voc", images=6)


# FCN-8s on the small VOC phantom written by ``_voc``.
VOC_RUN = ["train", "model=fcn8s", "model.width=0.0625", "data=voc_phantom", "data.root={tmp}/voc", "data.size=[64,64]"]


def _voc_with_class(where: Where, value: int) -> Path:
    root = _voc(where)
    mask_path = sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))[0]
    mask = Image.open(mask_path)
    array = np.asarray(mask).copy()
    array[0, 0] = value
    out = Image.fromarray(array, mode="P")
    out.putpalette(mask.getpalette())
    out.save(mask_path)
    return root


def _write_last(where: Where, payload: bytes) -> None:
    (where.run / "checkpoints" / "last.pt").write_bytes(payload)


class EvilPickle:
    def __reduce__(self):
        return (print, ("this ran",))


def _unsafe_checkpoint(where: Where) -> None:
    torch.save({"model": EvilPickle()}, where.run / "checkpoints" / "last.pt")


def _lock_by_live_process(where: Where) -> None:
    import socket

    (where.run / ".segbench.lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")


def _nothing(where: Where) -> None:
    pass


def _study_declared(where: Where) -> None:
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


def _config_folder(yaml_text: str, name: str = "mine") -> Callable[[Where], None]:
    """A shared config folder with one experiment file (``-cd {tmp}/cfg experiment=mine``)."""

    def write(where: Where) -> None:
        (where.tmp / "cfg" / "experiment").mkdir(parents=True, exist_ok=True)
        (where.tmp / "cfg" / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + yaml_text)

    return write


CALLBACK = "hydra:\n  callbacks:\n    x:\n      _target_: shutil.copyfile\n      src: a\n      dst: b\n"


# (id, what to break, the command (``{brats}``, ``{run}``, ``{tmp}`` filled in), words the line must hold)
CASES = [
    # Numbers out of type or range.
    ("batch-size-0", _nothing, ["train", "data.batch_size=0"], ["data.batch_size=0", "at least 1"]),
    ("batch-size-negative", _nothing, ["train", "data.batch_size=-3"], ["data.batch_size=-3"]),
    ("batch-size-fraction", _nothing, ["train", "data.batch_size=2.5"], ["data.batch_size=2.5", "integer"]),
    (
        "batch-larger-than-data",
        _nothing,
        ["train", "data.batch_size=5000"],
        ["data.batch_size=5000", "training samples"],
    ),
    ("lr-negative", _nothing, ["train", "optim.lr=-0.1"], ["optim.lr=-0.1", "above 0"]),
    ("lr-nan", _nothing, ["train", "optim.lr=nan"], ["optim.lr=nan"]),
    ("lr-inf", _nothing, ["train", "optim.lr=inf"], ["optim.lr=inf"]),
    ("lr-zero-with-sqrt-scaling", _nothing, ["train", "optim.lr=0", "optim.lr_scaling=sqrt"], ["optim.lr=0"]),
    ("max-steps-0", _nothing, ["train", "trainer.max_steps=0"], ["trainer.max_steps=0"]),
    ("no-budget", _nothing, ["train", "trainer.max_steps=null"], ["no training budget"]),
    ("val-every-0", _nothing, ["train", "trainer.val_every=0"], ["trainer.val_every=0"]),
    ("num-workers-negative", _nothing, ["train", "data.num_workers=-1"], ["data.num_workers=-1"]),
    ("val-fraction-above-1", _nothing, ["train", "data.val_fraction=1.5"], ["data.val_fraction=1.5"]),
    ("size-one-number", _nothing, ["train", "data.size=[48]"], ["data.size", "2 numbers"]),
    ("size-not-divisible", _nothing, ["train", "data.size=[50,50]"], ["50x50", "divisible"]),
    ("norm-eps-zero", _nothing, ["train", "norm.eps=0"], ["norm.eps=0"]),
    ("norm-momentum-2", _nothing, ["train", "norm.momentum=2"], ["norm.momentum=2"]),
    ("freeze-fraction", _nothing, ["train", "trainer.freeze_bn_after=1.5"], ["trainer.freeze_bn_after=1.5"]),
    ("betas-one", _nothing, ["train", "optim.betas=[0.9]"], ["optim.betas"]),
    ("precision-unknown", _nothing, ["train", "trainer.precision=bf16"], ["trainer.precision='bf16'", "bf16-mixed"]),
    (
        "channels-last-fp32-cpu",
        _nothing,
        ["train", "trainer.precision=32", "trainer.channels_last=true"],
        ["channels_last", "bf16-mixed"],
    ),
    ("seed-negative", _nothing, ["train", "seed=-1"], ["seed=-1"]),
    ("depth-0", _nothing, ["train", "model.depth=0"], ["model.depth=0"]),
    ("multirun-with-cfg", _nothing, ["train", "-m", "norm=batch,group", "--cfg", "job"], ["--cfg", "-m runs a sweep"]),
    (
        "split-by-site-without-sites",
        _nothing,
        ["train", "data.split=by_site"],
        ["data.split=by_site", "data.test_sites"],
    ),
    (
        "site-batches-too-few",
        _nothing,
        ["train", "data.site_batches=true", "data.batch_size=200"],
        ["data.site_batches=true", "fewer than one batch of 200"],
    ),
    (
        "model-too-large-for-memory",
        _nothing,
        ["train", "model.width=4096", "model.depth=5"],
        ["the first training step needs about", "GiB free on cpu", "lower model.width or model.depth"],
    ),
    ("cond-channel-out-of-range", _nothing, ["train", "norm=spade", "norm.cond_channels=[9]"], ["cond_channels", "9"]),
    ("added-typo-key", _nothing, ["train", "+trainer.max_step=10"], ["+trainer.max_step", "trainer.max_steps"]),
    ("deleted-group", _nothing, ["train", "~norm"], ["~norm", "not supported"]),
    ("data-root-is-a-file", lambda w: (w.tmp / "f").write_text("x"), ["train", "data.root={tmp}/f"], ["not a folder"]),
    (
        "cache-dir-under-a-file",
        lambda w: (w.tmp / "f").write_text("x"),
        ["train", "data.cache_dir={tmp}/f/cache"],
        ["data.cache_dir=", "is a file"],
    ),
    ("cache-not-a-bool", _nothing, ["train", "data.cache=maybe"], ["data.cache='maybe'", "bool"]),
    # The config trust boundary.
    (
        "target-in-key",
        _nothing,
        ["train", "+hydra.callbacks.x._target_=shutil.copyfile"],
        ["shutil.copyfile", "refusing"],
    ),
    (
        "target-in-value",
        _nothing,
        ["train", "+hydra.callbacks.x={_target_:shutil.rmtree,path:/tmp}"],
        ["shutil.rmtree"],
    ),
    ("target-in-sweep", _nothing, ["train", "-m", "+hydra.callbacks.x._target_=os.getcwd,os.system"], ["refusing"]),
    # BraTS files: unreadable, wrong labels, wrong voxels, wrong shapes, missing.
    ("nifti-truncated", lambda w: truncate(_file(w, "flair")), ["train"], ["flair.nii.gz", "cannot read"]),
    ("nifti-garbage", lambda w: _file(w, "seg").write_bytes(b"\x1f\x8b garbage"), ["train"], ["seg.nii.gz"]),
    ("label-7", _set_label(7), ["train"], ["label value(s) 7", "layout's labels are 0 (background)"]),
    ("label-300", _set_label(300), ["train"], ["300"]),
    ("label-negative", _set_label(-1), ["train"], ["-1"]),
    ("label-fractional", _set_label(1.5, np.float32), ["train"], ["1.5"]),
    ("voxel-nan", _set_voxels("t1", np.nan), ["train"], ["t1.nii.gz", "NaN"]),
    ("voxel-inf", _set_voxels("t2", np.inf), ["train"], ["t2.nii.gz", "infinite"]),
    ("modality-all-zero", _all_zero("t1ce"), ["train"], ["t1ce.nii.gz", "all zero"]),
    ("modality-other-shape", _other_shape("t2"), ["train"], ["t2.nii.gz", "shape"]),
    ("modality-missing", lambda w: _file(w, "flair").unlink(), ["train"], ["flair.nii.gz"]),
    (
        "data-root-empty",
        lambda w: shutil.rmtree(w.brats) or w.brats.mkdir(),
        ["train"],
        ["holds no subjects in a known layout"],
    ),
    (
        "swap-needs-the-conv",
        _nothing,
        ["train", "model=segresnet", "norm=ws_group"],
        ["cannot be swapped into an existing model"],
    ),
    (
        "torchvision-weights-missing",
        _nothing,
        ["train", "model=torchvision_seg", "model.weights={tmp}/w.pth"],
        ["model.weights=", "downloads nothing"],
    ),
    ("spacing-not-three-sizes", _nothing, ["train", "data.spacing=[1,0,1]"], ["data.spacing=", "three positive"]),
    ("mixed-voxel-sizes", lambda w: _set_zooms(w, (1.0, 1.0, 5.0)), ["train"], ["1 x 1 x 5 mm", "data.spacing"]),
    # Image/mask folders and VOC.
    (
        "folder-mask-outside-classes",
        lambda w: _folder_data(w, bad_value=7),
        ["train", "data=folder", "data.root={tmp}/folder", "data.size=[32,32]", "+data.classes={0:0,255:1}"],
        ["p2_1_mask.png", "7", "data.classes"],
    ),
    (
        "folder-mask-corrupt",
        lambda w: _folder_data(w, corrupt=True),
        ["train", "data=folder", "data.root={tmp}/folder", "data.size=[32,32]"],
        ["p3_0_mask.png", "cannot read"],
    ),
    (
        "folder-image-truncated",
        _truncate_image,
        ["train", "data=folder", "data.root={tmp}/folder", "data.size=[32,32]"],
        ["p4_1.png", "cannot read"],
    ),
    ("voc-class-out-of-range", lambda w: _voc_with_class(w, 40), [*VOC_RUN, "loss=ce"], ["40", "0-20, 255"]),
    (
        "voc-class-weights-mismatch",
        _voc,
        [*VOC_RUN, "loss=ce", "loss.class_weights=[1,2]"],
        ["loss.class_weights", "21 classes"],
    ),
    (
        "voc-whole-images-in-batches",
        _voc,
        [*VOC_RUN, "data.val_batch_size=4"],
        ["data.val_batch_size=4", "val_whole_images"],
    ),
    ("modalities-empty", _nothing, ["train", "data.modalities=[]"], ["data.modalities is empty"]),
    # Resume: broken checkpoints, another model, nothing to resume.
    (
        "resume-truncated",
        lambda w: truncate(w.run / "checkpoints" / "last.pt"),
        ["train", "trainer.resume={run}"],
        ["last.pt", "truncated"],
    ),
    ("resume-garbage", lambda w: _write_last(w, b"garbage" * 100), ["train", "trainer.resume={run}"], ["last.pt"]),
    (
        "resume-not-a-dict",
        lambda w: torch.save([1, 2], w.run / "checkpoints" / "last.pt"),
        ["train", "trainer.resume={run}"],
        ["not a segbench checkpoint"],
    ),
    ("resume-unsafe", _unsafe_checkpoint, ["train", "trainer.resume={run}"], ["refused", "arbitrary code"]),
    (
        "resume-changed-norm",
        _nothing,
        ["train", "trainer.resume={run}", "norm=group", "norm.num_groups=2"],
        ["norm.name", "'batch' -> 'group'"],
    ),
    ("resume-changed-width", _nothing, ["train", "trainer.resume={run}", "model.width=8"], ["model.width"]),
    ("resume-changed-lr", _nothing, ["train", "trainer.resume={run}", "optim.lr=0.5"], ["optim.lr"]),
    ("resume-true-without-dir", _nothing, ["train", "trainer.resume=true"], ["hydra.run.dir"]),
    ("resume-absent", _nothing, ["train", "trainer.resume={tmp}/absent"], ["no checkpoint"]),
    (
        "resume-absent-sweep-member",
        _nothing,
        ["train", "trainer.resume={tmp}/7_seed=1,norm=batch"],
        ["7_seed=1,norm=batch", "no checkpoint"],
    ),
    (
        "study-other-design",
        _study_declared,
        ["study", "norm=none,batch", "--out", "{tmp}/study", "--max-seeds", "12"],
        ["declares max_seeds=20", "this command max_seeds=12"],
    ),
    ("override-unparsable", _nothing, ["train", "optim.lr=1=2"], ["'optim.lr=1=2'", "goes in quotes"]),
    ("resume-sweep", _nothing, ["train", "-m", "trainer.resume={run}", "seed=1,2"], ["one run"]),
    ("resume-locked", _lock_by_live_process, ["train", "trainer.resume={run}", "trainer.max_steps=4"], ["in use"]),
    ("run-dir-holds-a-run", _nothing, ["train", "hydra.run.dir={run}"], ["already holds a run", "trainer.resume"]),
    (
        "init-from-garbage",
        lambda w: (w.tmp / "w.pt").write_bytes(b"junk"),
        ["train", "model=fcn32s", "model.init_from={tmp}/w.pt"],
        ["w.pt", "cannot read"],
    ),
    # Reading finished runs.
    ("compare-without-tb", lambda w: shutil.rmtree(w.run / "tb"), ["compare", "{run}", "--out", "{tmp}/c"], ["tb/"]),
    ("compare-smooth-1", _nothing, ["compare", "{run}", "--out", "{tmp}/c", "--smooth", "1"], ["--smooth=1"]),
    (
        "compare-bad-metrics",
        lambda w: (w.run / "metrics.json").write_text("{oops"),
        ["compare", "{run}", "--out", "{tmp}/c"],
        ["metrics.json"],
    ),
    ("diagnose-negative-batches", _nothing, ["diagnose", "{run}", "--batches", "-3"], ["--batches", "at least 1"]),
    ("bench-batch-0", _nothing, ["bench", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    ("bench-packs-0", _nothing, ["bench", "--packs", "0"], ["--packs='0'", "positive"]),
    ("bench-without-data", _nothing, ["bench", "--data", "{tmp}/absent"], ["absent", "does not exist"]),
    ("make-data-unknown-kind", _nothing, ["make-data", "nosuch", "--out", "{tmp}/x"], ["invalid choice"]),
    ("make-data-no-images", _nothing, ["make-data", "voc-phantom", "--out", "{tmp}/x", "--images", "0"], ["--images"]),
    # Config folders are data: every route into the config is checked (-cd, -cp, -cn, search paths).
    (
        "config-dir-callback",
        _config_folder(CALLBACK),
        ["train", "-cd", "{tmp}/cfg", "experiment=mine"],
        ["hydra.callbacks.x._target_", "shutil.copyfile"],
    ),
    (
        "config-dir-override-target",
        _nothing,
        ["train", "-cd", "{tmp}", "+hydra.callbacks.x._target_=shutil.copyfile"],
        ["shutil.copyfile"],
    ),
    (
        "config-path-callback",
        _config_folder("data:\n  root: null\n" + CALLBACK),
        ["train", "-cp", "{tmp}/cfg/experiment", "-cn", "mine", "data.root={brats}"],
        ["hydra.callbacks.x._target_"],
    ),
    (
        "search-path-sweeper-target",
        _config_folder("hydra:\n  sweeper:\n    _target_: os.system\n"),
        ["train", "-cd", "{tmp}/cfg", "experiment=mine"],
        ["os.system"],
    ),
    (
        "config-dir-yaml-error",
        _config_folder("model:\n  width: [1, 2\n"),
        ["train", "-cd", "{tmp}/cfg", "experiment=mine"],
        ["YAML error", "mine.yaml:", "expected"],
    ),
    (
        "config-dir-log-outside",
        _config_folder("hydra:\n  job_logging:\n    handlers:\n      file:\n        filename: /tmp/elsewhere.log\n"),
        ["train", "-cd", "{tmp}/cfg", "experiment=mine"],
        ["filename", "outside the run folder"],
    ),
    (
        "log-handler-factory",
        _config_folder("hydra:\n  job_logging:\n    handlers:\n      x:\n        '()': os.system\n"),
        ["train", "-cd", "{tmp}/cfg", "experiment=mine"],
        ["'()' factory"],
    ),
    (
        "log-handler-class",
        _nothing,
        ["train", "hydra.job_logging.handlers.file.class=logging.handlers.SMTPHandler"],
        ["SMTPHandler", "logging.FileHandler"],
    ),
    ("output-subdir-outside", _nothing, ["train", "hydra.output_subdir=../../x"], ["hydra.output_subdir", "leaves"]),
    ("config-name-missing", _nothing, ["train", "-cn", "nosuch"], ["nosuch"]),
    ("config-dir-missing", _nothing, ["train", "-cd", "{tmp}/absent"], ["--config-dir", "no such folder"]),
    (
        "experimental-rerun",
        lambda w: (w.tmp / "x.pickle").write_bytes(b"junk"),
        ["train", "--experimental-rerun", "{tmp}/x.pickle"],
        ["--experimental-rerun", "pickle"],
    ),
    (
        "diagnose-garbage",
        lambda w: (w.run / "checkpoints" / "last.pt").write_bytes(b"x"),
        ["diagnose", "{run}"],
        ["last.pt"],
    ),
]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in root.rglob("*")
    }
