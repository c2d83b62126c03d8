"""The answer table of ``experiment=why_bn_failed``: which candidate cause reproduces "learns slower
and predicts terribly", each with its interval and verdict, and how often ``diagnose`` named it.

Each trained cause is paired with its no-BN twin on the same seeds (``none``, or
``none_no_inner_act`` for the skipped-activation arm). Batch statistics at eval need no training
of their own: they are the BN runs scored by ``diagnose`` with each batch's statistics, at the
eval batch and at batch 1, every way at the threshold it chose on val itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from segbench.analysis import stats
from segbench.analysis.arms import result
from segbench.analysis.decide import Design, Verdict, decide_family, declared_design
from segbench.analysis.diagnose import diagnose, name_cause
from segbench.analysis.runs import Run, find_runs
from segbench.analysis.study import with_planned_looks
from segbench.analysis.verdicts import contrast_converged, run_convergence

# (arm, its no-BN twin, what it adds, the cause diagnose should name on it)
TRAINED = (
    ("bn_pytorch", "none", "BN, PyTorch's defaults (momentum 0.1, eps 1e-5)", "healthy"),
    ("bn_tf1", "none", "BN, TF1's defaults (decay 0.999, eps 1e-3), updates run", "too_slow"),
    ("bn_tf1_never_updated", "none", "BN, TF1's defaults, update ops never run", "never_updated"),
    (
        "bn_batch_stats_at_eval",
        "none",
        "BN evaluated with batch statistics, trained as its own arm (val chose its checkpoint that way)",
        "batch_stats_at_eval",
    ),
    ("bn_pytorch_no_inner_act", "none_no_inner_act", "BN in the posted wiring (conv -> BN -> conv)", "healthy"),
    ("none_no_inner_act", "none", "the posted wiring itself, no BN", None),
)
EVAL_ONLY = (
    ("bn_pytorch", "batch", "PyTorch BN evaluated with batch statistics (is_training left true), eval batch"),
    ("bn_pytorch", "batch_1", "PyTorch BN evaluated with batch statistics at batch 1"),
    ("bn_tf1", "batch", "TF1 BN evaluated with batch statistics, eval batch"),
)


def _cause(run: Run) -> str:
    return run.overrides.get("cause", "?")


def _fit_auc(run: Run) -> float:
    """Training loss in eval mode on fixed training images, mean over the validations: how fast it learns."""
    values = run.scalar("train/loss_eval_mode")[1]
    return float(np.mean(values)) if len(values) else float("nan")


def diagnose_all(runs: list[Run], missing: bool = True) -> dict[str, dict]:
    """``diagnose --split test --checkpoint best.pt`` on every BN run (reused when already written;
    ``missing=False``: only the runs already diagnosed, the others left out)."""
    out = {}
    for run in runs:
        if not _cause(run).startswith("bn_"):
            continue
        path = run.path / "diagnose.json"
        cached = json.loads(path.read_text()) if path.exists() else {}
        if cached.get("split") != "test" or cached.get("checkpoint") != "best.pt" or "cause" not in cached:
            if not missing:
                continue
            diagnose(str(run.path), checkpoint="best.pt", split="test")
            cached = json.loads(path.read_text())
        else:  # the scores are measured once; the naming rule is applied to them afresh
            scores = {k: cached[k] for k in ("running", "batch", "batch_1", "precise")}
            cached["cause"], cached["verdict"] = name_cause(
                cached["metric"],
                scores,
                cached["statistics"],
                cached["batchmate_flip_fraction"],
                cached["layers"],
                int(run.config.get("data", {}).get("batch_size", 4)),
            )
        out[str(run.path)] = cached
    return out


def cause_table(
    sweep: str | list[str],
    design: Design | None = None,
    diagnose_missing: bool = True,
    eval_causes: bool = True,
    diagnoses: bool | None = None,
) -> tuple[str, dict]:
    """The answer table (markdown) and its numbers for ``why_bn_failed`` sweep folders (one, or
    several holding more seeds of the same arms). ``eval_causes=False`` leaves out the causes read off
    the BN runs by ``diagnose`` (batch statistics at eval): the family is then the trained causes
    alone, for a study that declared only those. ``diagnoses`` (default: ``eval_causes``) runs
    ``diagnose`` on every BN run and reports how often it named the arm's cause."""
    paths = [sweep] if isinstance(sweep, str) else list(sweep)
    runs = find_runs(paths)
    if design is None:  # a sequential study's round is judged at alpha / looks, as segbench study judges it
        design, _ = with_planned_looks(declared_design(runs), paths)
    arms: dict[str, dict[int, Run]] = defaultdict(dict)
    for run in runs:
        arms[_cause(run)][run.metrics["seed"]] = run
    diag = diagnose_all(runs, diagnose_missing) if (eval_causes if diagnoses is None else diagnoses) else {}
    rows = []
    for arm, twin, what, _ in TRAINED:
        if arm in arms and twin in arms:
            rows.append(
                {
                    "what": what,
                    "arm": arm,
                    "twin": twin,
                    "slower": stats.paired(
                        {s: _fit_auc(r) for s, r in arms[arm].items()}, {s: _fit_auc(r) for s, r in arms[twin].items()}
                    ),
                    "worse": stats.paired(
                        {s: result(r, "dice") for s, r in arms[arm].items()},
                        {s: result(r, "dice") for s, r in arms[twin].items()},
                    ),
                    "worse_05": stats.paired(
                        {s: result(r, "dice_at_0.5") for s, r in arms[arm].items()},
                        {s: result(r, "dice_at_0.5") for s, r in arms[twin].items()},
                    ),
                }
            )
    for arm, mode, what in EVAL_ONLY if eval_causes else ():
        if arm in arms and "none" in arms:
            scored = {s: diag[str(r.path)][mode] for s, r in arms[arm].items() if str(r.path) in diag}
            rows.append(
                {
                    "what": what,
                    "arm": f"{arm} ({mode} statistics)",
                    "twin": "none",
                    "slower": None,
                    "worse": stats.paired(scored, {s: result(r, "dice") for s, r in arms["none"].items()}),
                    "worse_05": None,
                }
            )
    # Three families, one per question asked of every cause; Holm within each.
    for key, direction in (("slower", +1), ("worse", -1), ("worse_05", -1)):
        judged = [r for r in rows if r[key] is not None]
        conv = [_converged(arms, r["arm"].split(" ")[0], r["twin"]) for r in judged]
        for row, verdict in zip(
            judged, decide_family([r[key]["diffs"] for r in judged], design, [direction] * len(judged), conv)
        ):
            row[key].update(verdict)
    nothing = [
        f"{c} seed {s}" for c, by in arms.items() for s, r in by.items() if (result(r, "dice_at_0.5") or 0) < 0.01
    ]
    return _markdown(rows, arms, diag, design), {
        "rows": rows,
        "hit_rate": hit_rate(arms, diag),
        "nothing_at_05": nothing,
        "runs": len(runs),
    }


def _converged(arms, arm: str, twin: str) -> bool | None:
    return contrast_converged(*(list(arms.get(name, {}).values()) for name in (arm, twin)))


def hit_rate(arms, diag) -> dict:
    """Per BN arm: how often diagnose named the expected cause, another one, or none ("unclear")."""
    out = {}
    for arm, _, _, expected in TRAINED:
        if expected is None or arm not in arms:
            continue
        named = [diag[str(r.path)]["cause"] for r in arms[arm].values() if str(r.path) in diag]
        if not named:  # no run of this arm diagnosed: nothing to count
            continue
        out[arm] = {
            "expected": expected,
            "right": sum(c == expected for c in named),
            "silent": sum(c == "unclear" for c in named),
            "wrong": sum(c not in (expected, "unclear") for c in named),
            "named": named,
        }
    return out


def _cell(res: dict | None, unit: str = "") -> str:
    if res is None:
        return "— (same training as its trained arm)"
    ci = f"[{res['low']:+.3f}, {res['high']:+.3f}]" if np.isfinite(res["low"]) else "[no interval]"
    return f"{res['diff']:+.3f}{unit} {ci}, Holm p {res['p_holm']:.3f}: **{res['verdict']}**"


def _share(res: dict) -> str:
    d = np.asarray(res["diffs"])
    return f"{int((d < 0).sum())} of {len(d)}"


def _markdown(rows, arms, diag, design: Design) -> str:
    counts = sorted({len(v) for v in arms.values()})
    steps = sorted({r.metrics.get("steps") for v in arms.values() for r in v.values()})
    conv = sum(run_convergence(r).get("converged") is True for v in arms.values() for r in v.values())
    total = sum(len(v) for v in arms.values())
    lines = [
        f"{counts[0]}-{counts[-1]} paired seeds per arm, {', '.join(map(str, steps))} steps; "
        f"{conv} of {total} runs converged by "
        f"the rule in `segbench/train/convergence.py`. Each cause minus its no-BN twin, mean [95 % t-interval]; "
        f"Holm over the causes, one family per column; margin ±{design.margin:g} Dice declared before the run; "
        + (f"a sequential study's look, judged at alpha/{design.looks}; " if design.looks > 1 else "")
        + "scope: these test subjects.",
        "",
        "| cause (minus its no-BN twin) | learns slower? (eval-mode training loss, mean over validations) | "
        "predicts worse? (test Dice, val-chosen threshold) | seeds worse | at a fixed 0.5 threshold |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {_cell(r['slower'])} | {_cell(r['worse'])} | {_share(r['worse'])} | "
            f"{_cell(r['worse_05']) if r['worse_05'] is not None else '—'} |"
        )
    lines += ["", *_absolute(arms)]
    rates = hit_rate(arms, diag)
    derived = any(r["slower"] is None for r in rows)  # rows read off the BN runs by diagnose
    bn_runs = sum(len(v) for c, v in arms.items() if c.startswith("bn_"))
    if rates:
        scope = (
            "every BN run"
            if len(diag) == bn_runs
            else f"{len(diag)} of the {bn_runs} BN runs (the others not diagnosed yet"
            + ("; the batch-statistics rows above read only the diagnosed ones)" if derived else ")")
        )
        lines += [
            "",
            f"`segbench diagnose --split test --checkpoint best.pt` on {scope}, against the cause each "
            "arm was built with:",
            "",
        ]
        for arm, h in rates.items():
            lines.append(
                f"- {arm} (expected `{h['expected']}`): named right {h['right']}, named wrong {h['wrong']}, "
                f"said nothing clear {h['silent']} of {len(h['named'])} ({', '.join(h['named'])})"
            )
    return "\n".join(lines)


def _absolute(arms) -> list[str]:
    """Each arm's own test Dice (mean over its seeds, t-interval), the number to set beside published ones."""
    lines = [
        "| arm | seeds | test Dice, mean over seeds [95 % CI] | per seed | at its plateau |",
        "|---|---|---|---|---|",
    ]
    for arm in sorted(arms, key=lambda a: (a != "none", a)):
        by_seed = [result(arms[arm][s], "dice") for s in sorted(arms[arm])]
        mean, low, high = stats.mean_ci([v for v in by_seed if v is not None])
        conv = sum(run_convergence(r).get("converged") is True for r in arms[arm].values())
        per_seed = ", ".join("—" if v is None else f"{v:.3f}" for v in by_seed)
        lines.append(
            f"| {arm} | {len(by_seed)} | {mean:.3f} [{low:.3f}, {high:.3f}] | {per_seed} | {conv}/{len(by_seed)} |"
        )
    return lines


def write_cause_report(
    sweep: str | list[str],
    out: str,
    eval_causes: bool = True,
    diagnoses: bool | None = None,
    diagnose_missing: bool = True,
) -> Path:
    text, numbers = cause_table(sweep, eval_causes=eval_causes, diagnoses=diagnoses, diagnose_missing=diagnose_missing)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "causes.md").write_text(text + "\n")
    return folder / "causes.md"


def _held(res: dict | None) -> bool:
    return res is not None and res.get("kind") is Verdict.HELD and not res.get("early")


def answer_lines(numbers: dict) -> list[str]:
    """The first question's answer in plain lines, written from the verdicts (nothing here is typed by hand)."""
    rows = numbers["rows"]

    def how_slow(r):  # every cause that predicts worse is listed, whether or not its slower learning resolved
        if r["slower"] is None:
            return r["what"]
        return f"{r['what']} ({'and learns slower' if _held(r['slower']) else 'learning slower not resolved'})"

    both = [how_slow(r) for r in rows if _held(r["worse"])]
    slower_only = [r["what"] for r in rows if _held(r["slower"]) and not _held(r["worse"])]
    lines = [
        f"1. **Reproduce the symptom (predicts worse)**: "
        f"{'; '.join(both) if both else 'none of the causes, at these seeds'}."
    ]
    lines.append(f"2. **Learn slower without predicting worse**: {'; '.join(slower_only) if slower_only else 'none'}.")
    lines.append("")  # line 3, once the early-training results are set apart below

    def signal(r):
        return (
            f"{r['what']}: test Dice {r['worse']['diff']:+.3f} [{r['worse']['low']:+.3f}, {r['worse']['high']:+.3f}], "
            f"worse in {_share(r['worse'])} seeds (raw p {r['worse']['p']:.3f}, Holm {r['worse']['p_holm']:.3f})"
        )

    def early(r):  # passed the family's correction, but an arm had not reached its plateau
        return not _held(r["worse"]) and r["worse"]["early"] and r["worse"]["kind"] is Verdict.HELD

    passed_early = [r for r in rows if early(r)]
    neither = [r["what"] for r in rows if not _held(r["worse"]) and not _held(r["slower"]) and r not in passed_early]
    lines[2] = f"3. **No resolved effect on either**: {'; '.join(neither) if neither else 'none'}."
    strong = [r for r in rows if not _held(r["worse"]) and not early(r) and r["worse"].get("p", 1) < 0.05]
    if passed_early:
        lines.append(
            "   Through the family correction, but early-training (not every run of the arm or its twin at "
            f"its plateau, so not yet a verdict on final performance): {'; '.join(map(signal, passed_early))}."
        )
    if strong:
        lines.append(f"   Signals the family correction does not yet let through: {'; '.join(map(signal, strong))}.")
    names = {r["arm"] for r in rows if _held(r["worse"])}
    names_early = {r["arm"] for r in passed_early}
    fixes = []
    if names & {"bn_tf1_never_updated", "bn_tf1"}:
        fixes.append(
            "run the moving-average updates (`with tf.control_dependencies(tf.get_collection("
            "tf.GraphKeys.UPDATE_OPS)): train_op = optimizer.minimize(loss)`) and lower `decay` from "
            "0.999 to 0.9-0.99 for a run this short (PyTorch's momentum 0.1 is decay 0.9)"
        )
    if any(n.startswith("bn_pytorch (batch") or n.startswith("bn_tf1 (batch") for n in names):
        fixes.append("evaluate with `is_training=False`: batch statistics at test time cost Dice")
    if not fixes and names_early & {"bn_tf1_never_updated", "bn_tf1"}:
        fixes.append(
            "on early-training evidence (see above): run the moving-average updates (`with "
            "tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)): train_op = "
            "optimizer.minimize(loss)`) and lower `decay` from 0.999 to 0.9-0.99 for a run this short"
        )
    if not fixes:
        fixes.append("nothing in the BN settings tested here explains the symptom at these seeds")
    lines.append(f"4. **What to change in the first question's code**: {'; '.join(fixes)}.")
    nothing = numbers.get("nothing_at_05", [])
    lines.append(
        f"5. **Judge with the right number**: at a fixed 0.5 threshold {len(nothing)} of {numbers.get('runs')} "
        f"runs predict no tumour at all on test{' (' + ', '.join(nothing) + ')' if nothing else ''}; the "
        "val-chosen threshold and threshold-free AP separate the causes, 0.5 mixes in calibration."
    )
    return lines
