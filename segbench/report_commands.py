"""``segbench report`` and ``segbench findings``: the tables written from a study's runs, and the
answers table of the README and findings read back from those tables."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from segbench.errors import OneLineArgumentParser, SegbenchError


def report_command(argv: list[str]) -> None:
    parser = OneLineArgumentParser(
        prog="segbench report", description="a study's own table from its sweep folders (beside compare's)"
    )
    parser.add_argument(
        "kind",
        choices=["causes", "batch-size", "site-shift", "cv"],
        help="causes: why_bn_failed-style cause table (causes.md); batch-size: norm x batch size contrasts "
        "(batch_size.md); site-shift: held-out site contrasts (site_shift.md); cv: each arm against "
        "--reference by k-fold cross-validation (cv.md)",
    )
    parser.add_argument("sweeps", nargs="+", help="sweep folders holding the study's runs (more seeds: more folders)")
    parser.add_argument("--out", required=True, help="folder to write the table into")
    parser.add_argument("--metric", default="dice", help="batch-size, site-shift, cv: the test metric (default dice)")
    parser.add_argument(
        "--reference", default=None, help="cv: the arm every other arm is set against, e.g. cause=none or norm=batch"
    )
    parser.add_argument("--challenger", default="group", help="batch-size: the norm set against BN (default group)")
    parser.add_argument(
        "--trained-causes-only",
        action="store_true",
        help="causes: the family is the trained arms alone (no batch-statistics rows read off the BN runs)",
    )
    parser.add_argument("--no-diagnose", action="store_true", help="causes: do not run diagnose on the BN runs")
    parser.add_argument(
        "--diagnosed-only",
        action="store_true",
        help="causes: count the diagnoses already written beside the runs (diagnose.json); run none",
    )
    parser.add_argument(
        "--looks",
        type=int,
        default=1,
        help="batch-size, site-shift: the looks the study planned before its runs; each is judged at "
        "alpha / looks (default 1; a causes study reads its looks from study.json)",
    )
    args = parser.parse_args(argv)
    if args.looks < 1:
        raise SegbenchError(f"report: --looks {args.looks}: give the planned looks, 1 or more")
    if args.looks != 1 and args.kind in ("causes", "cv"):
        raise SegbenchError(
            "report: --looks applies to batch-size and site-shift; a causes study's looks come from its "
            "study.json, and a cross-validation is read once"
        )
    if args.diagnosed_only and (args.kind != "causes" or args.no_diagnose):
        raise SegbenchError("report: --diagnosed-only applies to causes, without --no-diagnose")
    if (args.reference is None) != (args.kind != "cv"):
        raise SegbenchError(
            "report: --reference names cv's reference arm (e.g. --reference cause=none); "
            + ("give it" if args.kind == "cv" else f"{args.kind} has its own contrasts")
        )
    for sweep in args.sweeps:
        if not os.path.isdir(sweep):
            raise SegbenchError(f"report: sweep folder {sweep!r} not found")
    if args.kind == "causes":
        from segbench.analysis.causes import write_cause_report

        path = write_cause_report(
            args.sweeps,
            args.out,
            eval_causes=not args.trained_causes_only,
            diagnoses=not args.no_diagnose,
            diagnose_missing=not args.diagnosed_only,
        )
    elif args.kind == "batch-size":
        from segbench.analysis.batch_study import write_table

        path = write_table(args.sweeps, args.out, metric=args.metric, challenger=args.challenger, looks=args.looks)
    elif args.kind == "site-shift":
        from segbench.analysis.site_study import write_table

        path = write_table(args.sweeps, args.out, metric=args.metric, looks=args.looks)
    else:
        from segbench.analysis.cv_study import write_table

        path = write_table(args.sweeps, args.out, reference=args.reference, metric=args.metric)
    print(path.read_text(), end="")
    print(f"wrote {path}", file=sys.stderr)


def findings_command(argv: list[str]) -> None:
    parser = OneLineArgumentParser(
        prog="segbench findings",
        description="the answers table, read from the result files that RESULTS/answers.yaml names",
    )
    parser.add_argument("results", help="folder of kept results with its answers.yaml (e.g. docs/results)")
    parser.add_argument("--update", nargs="+", default=[], metavar="FILE", help="fill FILE's answers block")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block differs")
    args = parser.parse_args(argv)
    if args.check and not args.update:
        raise SegbenchError("findings: --check compares files: name them with --update FILE...")
    from segbench.analysis.findings import answers_table, update

    if not args.update:
        print(answers_table(Path(args.results)), end="")
        return
    diffs = update(Path(args.results), [Path(f) for f in args.update], args.check)
    if diffs:
        print("\n".join(diffs))
        print(f"segbench findings: {len(diffs)} file(s) differ from {args.results}", file=sys.stderr)
        sys.exit(1)
    print(f"{'checked' if args.check else 'updated'}: {', '.join(args.update)}", file=sys.stderr)
