"""The answers table, generated from the result files a study kept.

``<results>/answers.yaml`` lists one row per answer: the question, the data, the section of the
findings, and where its figures live. The effect, its interval, n and the verdict are read from
that file, never typed:

- ``paired: <study>/paired.csv`` with ``a`` and ``b``: the row ``segbench compare`` wrote for
  that pair (``diff [low, high]``, ``n``, ``verdict``);
- ``table: <study>/<file>.md`` with ``row`` (the first cell) and ``column`` (a header): a cell
  written as ``+0.005 [+0.003, +0.007] ... **verdict**`` by the study reports, ``count`` naming
  the column that says ``k of n`` (n paired units), and ``verdict_column`` where the verdict has
  a column of its own;
- ``text: <study>/<file>.md`` with ``pattern``: a regular expression whose named groups
  ``effect`` (or ``mean``, ``low``, ``high``) and optionally ``n`` and ``verdict`` pick the
  figures out of a generated summary (``verdict:`` in the row otherwise).

``segbench findings <results> --update FILE...`` rewrites the block between
``<!-- answers:begin -->`` and ``<!-- answers:end -->`` in each file, and each block between
``<!-- include: <study>/<file> -->`` and ``<!-- end include -->`` with that file as kept (a
study's verdict lines or its table, verbatim); ``--check`` changes nothing and fails (exit 1) when
a committed block differs from what the files give.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from segbench.errors import SegbenchError

BEGIN = "<!-- answers:begin -->"
END = "<!-- answers:end -->"
HEADER = "| question | data | verdict | effect [95 % CI] | n | section |\n|---|---|---|---|---|---|"
INTERVAL = re.compile(r"([+\-−]?\d+\.\d+)\s*\[([+\-−]?\d+\.\d+),\s*([+\-−]?\d+\.\d+)\]")
BOLD = re.compile(r"\*\*(.+?)\*\*")
K_OF_N = re.compile(r"\d+\s+of\s+(\d+)")


@dataclass(frozen=True)
class Answer:
    question: str
    data: str
    section: str
    verdict: str
    effect: str
    n: str
    note: str = ""

    def row(self) -> str:
        verdict = f"**{self.verdict}**" + (f": {self.note}" if self.note else "")
        return f"| {self.question} | {self.data} | {verdict} | {self.effect} | {self.n} | {self.section} |"


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _from_paired(path: Path, spec: dict) -> tuple[str, str, str]:
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["a"] == spec["a"] and r["b"] == spec["b"]]
    if not rows:
        raise SegbenchError(f"findings: {path} has no row a={spec['a']!r}, b={spec['b']!r}")
    r = rows[0]
    effect = f"{_signed(float(r['diff']))} [{_signed(float(r['low']))}, {_signed(float(r['high']))}]"
    return r["verdict"].strip(), effect, r["n"]


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every pipe table in a markdown text, as rows keyed by the header's cells."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s|:-]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _from_table(path: Path, spec: dict) -> tuple[str, str, str]:
    for table in markdown_tables(path.read_text()):
        for row in table:
            if next(iter(row.values()), None) == spec["row"] and spec["column"] in row:
                cell = row[spec["column"]]
                effect = INTERVAL.search(cell)
                verdict_cell = row[spec["verdict_column"]] if "verdict_column" in spec else cell
                verdict = BOLD.search(verdict_cell)
                count = K_OF_N.search(row.get(spec.get("count", ""), ""))
                if not (effect and verdict and count):
                    raise SegbenchError(f"findings: {path} row {spec['row']!r} lacks an interval, verdict or 'k of n'")
                lo, hi = _number(effect.group(2)), _number(effect.group(3))
                text = f"{_signed(_number(effect.group(1)))} [{_signed(lo)}, {_signed(hi)}]"
                return verdict.group(1).strip(), text, count.group(1)
    raise SegbenchError(f"findings: {path} has no table row {spec['row']!r} with a column {spec['column']!r}")


def _from_text(path: Path, spec: dict) -> tuple[str, str, str]:
    match = re.search(spec["pattern"], path.read_text(), re.S)
    if not match:
        raise SegbenchError(f"findings: {path} does not match the pattern of {spec.get('question', 'a row')!r}")
    groups = match.groupdict()
    if groups.get("effect"):
        effect = groups["effect"]
    elif "mean" not in groups:  # the pattern only shows the file says what the row claims (a declared design)
        effect = spec.get("effect", "–")
    else:
        effect = f"{_number(groups['mean']):.3f} [{_number(groups['low']):.3f}, {_number(groups['high']):.3f}]"
    return groups.get("verdict") or spec.get("verdict", ""), effect, groups.get("n") or spec.get("n", "")


SOURCES = {"paired": _from_paired, "table": _from_table, "text": _from_text}


def answer(results: Path, spec: dict) -> Answer:
    kinds = [k for k in SOURCES if k in spec]
    if len(kinds) != 1:
        raise SegbenchError(f"findings: {spec.get('question')!r} needs one of paired:, table:, text:")
    path = results / spec[kinds[0]]
    if not path.is_file():
        raise SegbenchError(f"findings: {path} not found (row {spec.get('question')!r})")
    verdict, effect, n = SOURCES[kinds[0]](path, spec)
    unit = spec.get("unit", "")
    return Answer(
        question=spec["question"],
        data=spec["data"],
        section=spec["section"],
        verdict=spec.get("verdict_words", {}).get(verdict, verdict),
        effect=f"{unit} {effect}".strip() if unit else effect,
        n=f"{n} {spec.get('units', 'seeds')}".strip(),
        note=spec.get("note", ""),
    )


def answers_table(results: Path) -> str:
    spec_file = results / "answers.yaml"
    if not spec_file.is_file():
        raise SegbenchError(f"findings: {spec_file} not found (the list of answers and their files)")
    specs = yaml.safe_load(spec_file.read_text()) or []
    rows = [answer(results, spec).row() for spec in specs]
    return f"{HEADER}\n" + "\n".join(rows) + "\n"


INCLUDE = re.compile(r"<!-- include: (?P<path>\S+) -->\n.*?<!-- end include -->", re.S)


def with_block(text: str, block: str, name: str) -> str:
    if BEGIN not in text or END not in text:
        raise SegbenchError(f"findings: {name} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{block}\n{END}{tail}"


def with_includes(text: str, results: Path, name: str) -> str:
    """Each ``<!-- include: <file under results> -->`` block holds that file as it is (text files fenced)."""

    def fill(match: re.Match) -> str:
        path = results / match["path"]
        if not path.is_file():
            raise SegbenchError(f"findings: {name} includes {match['path']}, not found under {results}")
        body = path.read_text().rstrip("\n")
        if path.suffix != ".md":
            body = f"```\n{body}\n```"
        return f"<!-- include: {match['path']} -->\n{body}\n<!-- end include -->"

    return INCLUDE.sub(fill, text)


def fill(text: str, results: Path, name: str, answers: str) -> str:
    """The answers block (where the file has one) and every include block, from the result files."""
    has_answers = BEGIN in text
    if not has_answers and not INCLUDE.search(text):
        raise SegbenchError(f"findings: {name} has no {BEGIN} ... {END} block and no include block to fill")
    if has_answers:
        text = with_block(text, answers, name)
    return with_includes(text, results, name)


def update(results: Path, files: list[Path], check: bool) -> list[str]:
    """Fill each file's blocks; with ``check`` write nothing and return the diffs.

    Every file is read and filled in memory first, so a file without a block changes none.
    """
    for path in files:
        if not path.is_file():
            raise SegbenchError(f"findings: {path} not found")
    texts = {path: path.read_text() for path in files}
    answers = answers_table(results) if any(BEGIN in text for text in texts.values()) else ""
    filled = {path: fill(old, results, str(path), answers) for path, old in texts.items()}
    diffs = []
    for path, new in filled.items():
        if new == texts[path]:
            continue
        if check:
            diff = difflib.unified_diff(texts[path].splitlines(), new.splitlines(), str(path), "generated", lineterm="")
            diffs.append("\n".join(diff))
        else:
            path.write_text(new)
    return diffs
