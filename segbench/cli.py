"""The ``segbench`` command: train, make-data, compare, diagnose, bench.

User errors print one line and exit with code 2; nothing here shows a traceback for them.
"""

from __future__ import annotations

import os
import sys

from segbench.errors import OneLineArgumentParser, SegbenchError, at_least, one_line
from segbench.report_commands import findings_command, report_command
from segbench.train_command import train_command

USAGE = """segbench <command> [...]    (segbench --version, segbench -h)

commands:
  train [OVERRIDES...]     train with Hydra overrides (add -m for a sweep), e.g. norm=group data.batch_size=2
  torchrun [OPTS] train ... torchrun's options, then a DDP training run; a lost rank ends it in one line + resume
  make-data KIND --out DIR write a phantom dataset: brain-phantom (BraTS layout) or voc-phantom (VOCdevkit)
  data-stats ROOT          subjects, tumour share, lesions, volumes, per-site intensity of a BraTS-layout folder
  compare RUN_OR_SWEEP...  summary.md/.csv, paired.csv, curves.png, by_batch_size.png, predictions.png
  study OVERRIDES... --out DIR   paired seeds in rounds until every comparison is decided (or --max-seeds)
  diagnose RUN_DIR         what batch norm did in a run: running vs batch vs recomputed statistics
  evaluate RUN --data-root DIR   score a run's best-by-val checkpoint on every subject of another folder
  report KIND SWEEP... --out DIR  a study's own table: causes, batch-size or site-shift
  findings RESULTS [--update FILE...] [--check]   the answers table from kept result files
  adapt RUN_DIR            test-time adaptation on its test split: AdaBN statistics, TENT (no test label read)
  bench                    images/s: segbench's training step vs a bare loop, the loader, each norm
  completion bash          Tab completion: eval "$(segbench completion bash)" (in ~/.bashrc to keep it)

segbench train --help lists the config groups and their choices.
"""


def _make_data(argv: list[str]) -> None:
    from segbench.data.layouts import LAYOUTS

    parser = OneLineArgumentParser(prog="segbench make-data")
    parser.add_argument("kind", choices=["brain-phantom", "voc-phantom"])
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--subjects", type=at_least(1), default=None, help="brain-phantom: subjects (default 48)")
    parser.add_argument("--sites", type=at_least(1), default=None, help="brain-phantom: simulated sites (default 3)")
    parser.add_argument("--voxel-mm", type=int, default=2, choices=[1, 2], help="brain-phantom: voxel size")
    parser.add_argument("--images", type=at_least(4), default=None, help="voc-phantom: images (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="brain-phantom: rewrite subjects already there")
    parser.add_argument(
        "--layout",
        default="brats2021",
        choices=list(LAYOUTS),
        help="brain-phantom: how the folder is laid out (default brats2021)",
    )
    args = parser.parse_args(argv)
    if args.kind == "brain-phantom":
        from segbench.data.brain_phantom import PhantomConfig, write_brain_phantom

        defaults = PhantomConfig()
        cfg = PhantomConfig(
            subjects=args.subjects or defaults.subjects,
            sites=args.sites or defaults.sites,
            voxel_mm=args.voxel_mm,
            seed=args.seed,
        )
        out, written = write_brain_phantom(
            args.out,
            cfg,
            progress=lambda i, n: print(f"\rsubject {i}/{n}", end="", file=sys.stderr),
            force=args.force,
            layout=args.layout,
        )
        kept = cfg.subjects - written
        print(
            f"\nwrote {written} {args.layout}-layout subjects to {out}"
            + (f"; kept {kept} already there (--force rewrites them)" if kept else "")
        )
        from segbench.data.stats import data_stats

        print(data_stats(str(out)))
    else:
        from segbench.data.voc_phantom import write_voc_phantom

        out = write_voc_phantom(args.out, images=args.images or 60, seed=args.seed)
        print(f"wrote a VOCdevkit-layout phantom to {out}")


def _data_stats(argv: list[str]) -> None:
    parser = OneLineArgumentParser(prog="segbench data-stats")
    parser.add_argument("root", help="a BraTS-layout folder (real or phantom)")
    parser.add_argument("--tumor-fraction", type=float, default=0.5, help="as data.tumor_fraction (default 0.5)")
    args = parser.parse_args(argv)
    from segbench.data.stats import data_stats

    print(data_stats(args.root, args.tumor_fraction))


def _compare(argv: list[str]) -> None:
    parser = OneLineArgumentParser(prog="segbench compare")
    parser.add_argument("runs", nargs="+", help="run directories or sweep folders")
    parser.add_argument("--out", default=None, help="report folder (default: the sweep folder, or ./compare)")
    parser.add_argument("--metric", default=None, help="test metric to compare (default: dice or miou)")
    parser.add_argument(
        "--by",
        default=None,
        help="comma-separated keys that define an arm (default: every override that differs), e.g. norm",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.6,
        help="EMA weight of the training-loss curve (TensorBoard's default 0.6; 0: raw)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=None,
        help="equivalence margin in the metric's units (default: study.margin, which the runs "
        "declared before they ran)",
    )
    parser.add_argument(
        "--evaluation",
        default=None,
        help="compare the runs' 'segbench evaluate' results of this name (subjects of another "
        "folder) instead of their test split",
    )
    args = parser.parse_args(argv)
    from segbench.analysis.compare import compare

    out = compare(
        args.runs,
        args.out,
        args.metric,
        args.by.split(",") if args.by else None,
        args.smooth,
        args.margin,
        args.evaluation,
    )
    verdict_lines = (out / "verdicts.txt").read_text() if (out / "verdicts.txt").exists() else ""
    print(f"{verdict_lines}report: {out / 'summary.md'}\ncurves: {out / 'curves.png'}")


def _study(argv: list[str]) -> None:
    parser = OneLineArgumentParser(
        prog="segbench study", description="train -m OVERRIDES over rounds of paired seeds until decided"
    )
    parser.add_argument(
        "overrides",
        nargs="+",
        help="Hydra overrides of the sweep, e.g. experiment=why_bn_failed cause=none,bn_tf1 (no seed=)",
    )
    parser.add_argument("--out", required=True, help="study folder (one sweep folder per round)")
    parser.add_argument("--first-seeds", type=at_least(2), default=4, help="seeds of the first round (default 4)")
    parser.add_argument("--seeds-per-round", type=at_least(1), default=4, help="seeds added per round (default 4)")
    parser.add_argument("--max-seeds", type=at_least(2), default=20, help="cap on paired seeds (default 20)")
    parser.add_argument("--start-seed", type=at_least(0), default=0, help="first seed (default 0)")
    parser.add_argument("--margin", type=float, default=None, help="equivalence margin (default: study.margin)")
    parser.add_argument("--metric", default=None, help="test metric (default: dice or miou)")
    args = parser.parse_args(argv)
    from segbench.analysis.compare import compare
    from segbench.analysis.study import run_study

    final = run_study(
        args.overrides,
        args.out,
        args.first_seeds,
        args.seeds_per_round,
        args.max_seeds,
        args.start_seed,
        args.margin,
        args.metric,
    )
    out = compare([args.out], args.out, args.metric)
    print(f"{sum(v['decided'] for v in final)} of {len(final)} comparisons decided; report: {out / 'summary.md'}")


def _diagnose(argv: list[str]) -> None:
    parser = OneLineArgumentParser(prog="segbench diagnose")
    parser.add_argument("run_dir")
    parser.add_argument("--batches", type=at_least(1), default=20, help="training batches for precise BN")
    parser.add_argument("--checkpoint", default="last.pt", choices=["last.pt", "best.pt"])
    parser.add_argument("--split", default="val", choices=["val", "test"], help="which held-out split to score")
    args = parser.parse_args(argv)
    from segbench.analysis.diagnose import diagnose

    print(diagnose(args.run_dir, args.batches, args.checkpoint, args.split))


def _evaluate(argv: list[str]) -> None:
    parser = OneLineArgumentParser(
        prog="segbench evaluate",
        description="score a trained run on subjects it never saw: nothing is trained "
        "and no label of that folder is used for any choice",
    )
    parser.add_argument("run_dir")
    parser.add_argument("--data-root", required=True, help="a folder of subjects in the layout the run's data= reads")
    parser.add_argument(
        "--checkpoint",
        default="best.pt",
        choices=["best.pt", "last.pt"],
        help="best.pt (chosen on the run's val, default) or last.pt",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="the evaluation's folder name under RUN/evaluations/ (default: the data folder's name)",
    )
    parser.add_argument("--force", action="store_true", help="write over an evaluation of the same name")
    args = parser.parse_args(argv)
    from segbench.analysis.external import evaluate_external, format_report

    print(format_report(evaluate_external(args.run_dir, args.data_root, args.checkpoint, args.name, args.force)))


def _adapt(argv: list[str]) -> None:
    parser = OneLineArgumentParser(
        prog="segbench adapt", description="test-time adaptation on the run's test split (its images, never its masks)"
    )
    parser.add_argument("run_dir")
    parser.add_argument(
        "--methods",
        default="none,adabn,tent",
        help="comma-separated: none, adabn, tent, site_bn (per-site BN statistics)",
    )
    parser.add_argument("--batches", type=at_least(1), default=20, help="test batches for the BN statistics (AdaBN)")
    parser.add_argument("--tent-steps", type=at_least(1), default=20, help="test batches TENT adapts on")
    parser.add_argument("--tent-lr", type=float, default=1e-3, help="TENT's Adam learning rate (default 1e-3)")
    parser.add_argument("--checkpoint", default="best.pt", choices=["last.pt", "best.pt"])
    args = parser.parse_args(argv)
    from segbench.analysis.adapt import adapt

    out = adapt(
        args.run_dir,
        [m for m in args.methods.split(",") if m],
        args.batches,
        args.tent_steps,
        args.tent_lr,
        args.checkpoint,
    )
    metric = out["metric"]
    print(f"test sites {out['test_sites']}; threshold {out['threshold_from_val']:.3f} chosen on val (training sites)")
    for method, r in out["methods"].items():
        ap = "n/a (pooled over sites)" if r["ap"] is None else f"{r['ap']:.4f}"
        print(f"{method:7s} {metric} {r[metric]:.4f}  dice_at_0.5 {r['dice_at_0.5']:.4f}  ap {ap}")


def _torchrun(argv: list[str]) -> None:
    from segbench.train.launch import main as launch

    launch(argv)


def _bench(argv: list[str]) -> None:
    from segbench.bench.command import main as bench_main

    bench_main(argv)


def _completion(argv: list[str]) -> None:
    from segbench.completion import BASH

    if argv != ["bash"]:
        raise SegbenchError(
            f"segbench completion {' '.join(argv) or '(nothing)'}: only bash is written; "
            'use eval "$(segbench completion bash)"'
        )
    print(BASH, end="")


def _complete(argv: list[str]) -> None:
    """Called by the completion script on each Tab: ``__complete COMMAND WORD POSITION``."""
    from segbench.completion import candidates

    command, word, position = (argv + ["", "", "1"])[:3]
    print("\n".join(candidates(command, word, int(position or 1), list(COMMANDS))))


COMMANDS = {
    "train": train_command,
    "make-data": _make_data,
    "data-stats": _data_stats,
    "compare": _compare,
    "study": _study,
    "diagnose": _diagnose,
    "evaluate": _evaluate,
    "findings": findings_command,
    "report": report_command,
    "adapt": _adapt,
    "bench": _bench,
    "torchrun": _torchrun,
    "completion": _completion,
}
HIDDEN_COMMANDS = {"__complete": _complete}
# Commands whose work runs in child processes (sweep workers, `segbench train -m` started by them):
# a stop signal ends them with their children (segbench.children).
SPAWNING_COMMANDS = {"train", "study", "bench"}


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # `segbench -h | head`: the reader left; say nothing more and do not let Python complain at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"segbench {version('segbench')}")
        return
    command, rest = argv[0], argv[1:]
    if command in HIDDEN_COMMANDS:
        HIDDEN_COMMANDS[command](rest)
        return
    if command not in COMMANDS:
        print(f"segbench: error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command in SPAWNING_COMMANDS:
        from segbench.children import stop_children_on_signals

        stop_children_on_signals()
    try:
        COMMANDS[command](rest)
    except (SegbenchError, OSError) as err:  # OSError: no space left, a read-only folder, no permission
        from segbench.train.launch import refused_under_launcher

        if not refused_under_launcher(one_line(err)):
            print(f"segbench: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        from segbench.children import stop_descendants

        n = stop_descendants()
        print("segbench: interrupted" + (f"; stopped its {n} worker process(es)" if n else ""), file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
