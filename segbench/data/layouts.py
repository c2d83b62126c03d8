"""Which layout a brain-MRI folder ships in, and where each subject's files and labels are.

Four layouts are read as they ship, found by themselves (no conversion step):

- ``brats2021``: BraTS 2018-2021, ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``; labels 1 necrotic
  core, 2 oedema, 4 enhancing tumour.
- ``brats2023``: BraTS 2023-2025, every cohort (GLI, MEN, MET, PED, SSA, ...),
  ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; labels 1 necrotic / non-enhancing core, 2 oedema
  (surrounding FLAIR hyperintensity), 3 enhancing tumour.
- ``msd``: the Medical Segmentation Decathlon's Task01: ``dataset.json``, one 4-D
  ``imagesTr/<case>.nii.gz`` per case and ``labelsTr/<case>.nii.gz``; channel order and label
  names from ``dataset.json`` (there: FLAIR, T1w, t1gd, T2w; 1 oedema, 2 non-enhancing, 3 enhancing).
- ``nnunet``: nnU-Net raw folders: ``dataset.json`` (``channel_names``, ``labels`` by name or as
  nnU-Net's regions), ``imagesTr/<case>_0000.nii.gz`` ... and ``labelsTr/<case>.nii.gz``.

File names are matched whatever their case. Each layout's label codes are mapped, when a subject
is read, to one convention (``NCR``, ``ED``, ``ET`` below, BraTS 2021's codes), so the regions
WT, TC and ET mean the same whichever layout the data came in. ``layout_writers`` puts a subject
in any of the layouts (the phantom and the tests use it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from segbench.errors import SegbenchError

NCR, ED, ET = 1, 2, 4  # the canonical codes: necrotic / non-enhancing core, oedema, enhancing tumour
LABEL_NAMES = {0: "background", NCR: "necrotic", ED: "oedema", ET: "enhancing"}
MODALITIES = ("t1", "t1ce", "t2", "flair")
EXTENSIONS = (".nii.gz", ".nii")
LAYOUTS = ("brats2021", "brats2023", "msd", "nnunet")
# The file suffix of each modality in the two BraTS namings, and their label codes.
SUFFIXES = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
}
BRATS_LABELS = {
    "brats2021": {0: 0, 1: NCR, 2: ED, 3: ET, 4: ET},  # 3: BraTS 2023 data named the old way
    "brats2023": {0: 0, 1: NCR, 2: ED, 3: ET},
}
CONVENTIONS = {
    "brats2021": "labels 1 necrotic, 2 oedema, 4 enhancing",
    "brats2023": "labels 1 necrotic, 2 oedema, 3 enhancing",
}


@dataclass(frozen=True)
class Channel:
    """Where one modality of a subject is: a 3-D file, or channel ``index`` of a 4-D one (MSD)."""

    path: Path
    index: int | None = None


@dataclass(frozen=True)
class Subject:
    """One subject's files and how its label codes map to the canonical ones."""

    id: str
    seg: Path
    channels: dict = field(hash=False)  # modality -> Channel
    labels: dict = field(hash=False)  # raw label code -> NCR, ED, ET or 0
    layout: str = "brats2021"

    def channel(self, modality: str) -> Channel:
        if modality not in self.channels:
            sep, suffixes = SUFFIXES.get(self.layout, ("_", {}))
            wanted = f"{self.id}{sep}{suffixes[modality]}.nii.gz; " if modality in suffixes else ""
            raise SegbenchError(
                f"subject {self.id}: no {modality} image ({wanted}it has: "
                f"{', '.join(self.channels) or 'none'}) in {self.seg.parent}"
            )
        return self.channels[modality]

    def sources(self, modalities) -> list[Path]:
        """The files a subject's cached copy is built from: the label map and each modality's image."""
        return [self.seg] + list(dict.fromkeys(self.channel(m).path for m in modalities))


@dataclass
class Layout:
    """A folder's layout and its subjects, in sorted order."""

    name: str
    root: Path
    subjects: list[Subject]
    convention: str
    skipped: list[str] = field(default_factory=list)  # folders or cases without a label map

    @property
    def modalities(self) -> list[str]:
        """The modalities every subject has, in canonical order."""
        return [m for m in MODALITIES if all(m in s.channels for s in self.subjects)]

    def summary(self) -> str:
        """The one line that says what was found."""
        line = (
            f"{self.root}: {self.name} layout, {len(self.subjects)} subjects, modalities "
            f"{', '.join(self.modalities) or 'none'}; {self.convention}"
        )
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            line += f"; skipped {len(self.skipped)} without a label map ({shown})"
        return line


def _strip(name: str) -> str | None:
    """``name`` without its NIfTI extension (lower-case), None for any other file."""
    low = name.lower()
    for ext in EXTENSIONS:
        if low.endswith(ext) and not low.startswith("."):  # "._x.nii.gz": macOS litter in the MSD tar
            return low[: -len(ext)]
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """A folder's NIfTI files by their lower-case name without extension."""
    found = {}
    for path in folder.iterdir():
        stem = _strip(path.name)
        if stem is not None and path.is_file():
            found[stem] = path
    return found


def _brats_subject(folder: Path) -> Subject | None:
    files = _nifti_files(folder)
    sid = folder.name.lower()
    for name, (sep, suffixes) in SUFFIXES.items():
        seg = files.get(f"{sid}{sep}seg")
        if seg is not None:
            channels = {m: Channel(files[f"{sid}{sep}{s}"]) for m, s in suffixes.items() if f"{sid}{sep}{s}" in files}
            return Subject(folder.name, seg, channels, BRATS_LABELS[name], name)
    return None


def find_layout(root: str | os.PathLike) -> Layout:
    """The layout of ``root`` and its subjects; one clear line when it holds none of the four."""
    base = Path(root)
    if not base.is_dir():
        state = "is a file, not a folder" if base.exists() else "does not exist"
        raise SegbenchError(f"data.root={str(root)!r} {state}; " + MISSING_HELP.format(root=root))
    if (base / "dataset.json").is_file():
        return _dataset_json_layout(base)
    subjects, skipped = [], []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        subject = _brats_subject(folder)
        if subject is not None:
            subjects.append(subject)
        elif any(_strip(p.name) for p in folder.iterdir()):
            skipped.append(folder.name)
    if not subjects:
        raise SegbenchError(
            f"data.root={str(root)!r} holds no subjects in a known layout (BraTS "
            "<id>/<id>_seg.nii.gz or <id>/<id>-seg.nii.gz, or an MSD / nnU-Net folder with "
            "dataset.json); " + MISSING_HELP.format(root=root)
        )
    names = sorted({s.layout for s in subjects})
    return Layout("+".join(names), base, subjects, "; ".join(CONVENTIONS[n] for n in names), skipped)


MISSING_HELP = (
    "make a phantom with 'segbench make-data brain-phantom --out {root}' "
    "or put real BraTS, MSD Task01 or nnU-Net raw data there (see data/README.md)"
)


# Modality names as MSD, nnU-Net and the BraTS generations spell them -> the canonical four.
def modality_of(name: str) -> str:
    """The canonical modality (t1, t1ce, t2, flair) a channel name means; one line if it means none."""
    s = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if "flair" in s or s == "t2f":
        return "flair"
    if s.startswith("t1") and any(k in s[2:] for k in ("gd", "ce", "c", "contrast", "post", "gad")):
        return "t1ce"
    if s in ("t1", "t1w", "t1n", "t1native", "native"):
        return "t1"
    if s in ("t2", "t2w"):
        return "t2"
    raise SegbenchError(
        f"dataset.json channel {name!r} is none of the modalities segbench reads "
        f"(T1 / T1w / t1n, T1Gd / t1c / t1ce, T2 / T2w, FLAIR / t2f)"
    )


def _role(name: str, code) -> int:
    """The canonical code a label name means (background, necrotic / non-enhancing, oedema, enhancing)."""
    s = re.sub(r"[^a-z]", "", str(name).lower())
    if s in ("background", "bg", "bckg"):
        return 0
    if "edema" in s or "oedema" in s or "hyperintens" in s or s in ("ed", "snfh"):
        return ED
    if s.startswith("non") or "necro" in s or s in ("ncr", "net", "netc", "ncrnet"):
        return NCR
    if "enhanc" in s or s == "et":
        return ET
    raise SegbenchError(
        f"dataset.json label {name!r} (value {code}) is none of background, necrotic / "
        "non-enhancing core, oedema (edema) or enhancing tumour"
    )


def _region(name: str) -> str | None:
    s = re.sub(r"[^a-z]", "", str(name).lower())
    if "whole" in s or s == "wt":
        return "WT"
    if "core" in s or s == "tc":
        return "TC"
    if "enhanc" in s or s == "et":
        return "ET"
    return None


def label_map(labels: dict) -> dict[int, int]:
    """Raw label code -> canonical code from a ``dataset.json`` ``labels`` entry, in any of its forms:
    MSD's ``{"1": "edema"}``, nnU-Net's ``{"edema": 1}`` or nnU-Net's regions
    ``{"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}``."""
    if not isinstance(labels, dict) or not labels:
        raise SegbenchError("dataset.json has no 'labels' mapping")
    if all(str(k).strip().isdigit() for k in labels):
        return {int(k): _role(v, k) for k, v in labels.items()}
    sets = {k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in labels.items()}
    if not any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        return {int(v[0]): _role(k, v[0]) for k, v in sets.items()}
    regions = {_region(k): {int(x) for x in v} for k, v in sets.items() if _region(k)}
    if set(regions) != {"WT", "TC", "ET"}:
        raise SegbenchError(
            f"dataset.json labels {labels} are regions but not whole tumour, tumour core and enhancing tumour"
        )
    out = {0: 0}
    out.update({c: ET for c in regions["ET"]})
    out.update({c: NCR for c in regions["TC"] - regions["ET"]})
    out.update({c: ED for c in regions["WT"] - regions["TC"]})
    return out


def _describe(mapping: dict[int, int]) -> str:
    return "labels " + ", ".join(f"{k} {LABEL_NAMES[v]}" for k, v in sorted(mapping.items()) if v)


def _dataset_json_layout(base: Path) -> Layout:
    try:
        meta = json.loads((base / "dataset.json").read_text())
    except (OSError, ValueError) as err:
        raise SegbenchError(f"{base / 'dataset.json'} cannot be read as JSON ({str(err).splitlines()[0]})") from None
    channels = meta.get("channel_names") or meta.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise SegbenchError(f"{base / 'dataset.json'} names no channels ('channel_names' or 'modality')")
    order = {int(k): modality_of(v) for k, v in channels.items()}
    mapping = label_map(meta.get("labels"))
    images_dir, labels_dir = base / "imagesTr", base / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise SegbenchError(f"{base} has dataset.json but no {folder.name}/ folder")
    images = _nifti_files(images_dir)
    per_channel = any(re.search(r"_\d{4}$", stem) for stem in images)
    name = "nnunet" if per_channel else "msd"
    subjects, skipped = [], []
    for stem, seg in sorted(_nifti_files(labels_dir).items()):
        case = seg.name[: len(stem)]  # the case id as it is spelled on disk
        if per_channel:
            found = {m: Channel(images[f"{stem}_{i:04d}"]) for i, m in order.items() if f"{stem}_{i:04d}" in images}
        else:
            found = {m: Channel(images[stem], i) for i, m in order.items()} if stem in images else {}
        if found:
            subjects.append(Subject(case, seg, found, mapping, name))
        else:
            skipped.append(case)
    if not subjects:
        raise SegbenchError(f"{base}: no case in labelsTr/ has its image(s) in imagesTr/")
    return Layout(name, base, subjects, _describe(mapping), skipped)
