"""Time to the first training step and peak memory as a BraTS folder grows (the README's scale table).

Each measurement runs in a fresh Python process: compose the config, ``prepare`` the run (read
or open every subject, build train/val/test, the model, the optimiser) and ``dry_run`` it (one
training step and one validation batch), then report wall seconds and the process's peak RSS.
Subject folders of growing size are made of symlinks to the first N subjects of one phantom, so
every count reads the same files.

    segbench make-data brain-phantom --out /tmp/p1mm --subjects 160 --voxel-mm 1
    python scripts/bench_data_scale.py --source /tmp/p1mm --counts 10 40 160 \
        --before /tmp/segbench-before   # optional: a checkout of an older segbench, measured the same way
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, resource, sys, time, tempfile
t0 = time.perf_counter()
# Import segbench from the checkout named, not from the editable install's import hook.
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]
sys.path.insert(0, sys.argv[2])
import segbench
from segbench.config import compose
from segbench.train.prepare import dry_run, prepare
cfg = compose(json.loads(sys.argv[1]))
prepared = prepare(cfg, tempfile.mkdtemp())
dry_run(prepared, cfg)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train_slices": len(prepared.splits.train), "code": segbench.__file__}))
"""


def subset(source: Path, count: int, work: Path) -> Path:
    """``work/n<count>``: symlinks to the first ``count`` subjects of ``source``."""
    subjects = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subjects) < count:
        sys.exit(f"--source {source} holds {len(subjects)} subjects, fewer than {count}")
    folder = work / f"n{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for subject in subjects[:count]:
        link = folder / subject.name
        if not link.exists():
            link.symlink_to(subject.resolve())
    return folder


def measure(checkout: Path, overrides: list[str], cache: Path) -> dict:
    env = {**os.environ, "SEGBENCH_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(overrides), str(checkout)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"probe failed in {checkout}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a BraTS-layout folder (e.g. a 1 mm phantom)")
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--before", type=Path, default=None, help="an older segbench checkout to measure too")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="segbench-scale-"))
    base = ["data=brats", "trainer.device=cpu", "data.batch_size=8", "data.val_batch_size=8"]
    rows = []
    try:
        print("| subjects | train slices | mode | time to first step (s) | peak RSS (MiB) |", flush=True)
        print("|---|---|---|---|---|", flush=True)
        for count in args.counts:
            root = subset(args.source, count, work)
            cache = work / f"cache-{count}"
            modes = [("before: every subject read into RAM", args.before, [])] if args.before else []
            modes += [("cache, first run (builds it)", here, []), ("cache, every later run", here, [])]
            for mode, checkout, extra in modes:
                row = {
                    "subjects": count,
                    "mode": mode,
                    **measure(checkout, base + [f"data.root={root}"] + extra, cache),
                }
                if not row["code"].startswith(str(checkout)):
                    sys.exit(f"measured {row['code']}, not the checkout {checkout}")
                rows.append(row)
                print(
                    f"| {count} | {row['train_slices']} | {mode} | {row['seconds']:.1f} | {row['peak_rss_mib']:.0f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
