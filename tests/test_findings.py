"""The answers table: read from the kept result files, and the committed tables match them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segbench.analysis.findings import BEGIN, END, answers_table, markdown_tables, update
from segbench.errors import SegbenchError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "REPORT.md"]

PAIRED = """a,b,n,diff,low,high,p_holm,verdict
norm=batch,norm=none,8,0.0351,0.0182,0.0513,0.0015,a > b
norm=batch,norm=group,6,-0.0012,-0.004,0.0021,0.9,equivalent within ±0.02
"""
TABLE = """# a study

| contrast | mean [95 % CI] | seeds in the claimed direction | Holm p | verdict |
|---|---|---|---|---|
| BN − GN at the small batch | +0.001 [-0.002, +0.004] | 2 of 6 | 1.000 | **equivalent within ±0.02** |
"""
SUMMARY = "Pooled over the 13 subjects: mean **0.712** [0.650, 0.770], median 0.75.\n"
SPEC = """
- question: BN or not
  data: phantom
  section: 1
  paired: s/paired.csv
  a: norm=batch
  b: norm=none
  verdict_words: {"a > b": BN better}
  unit: Dice
- question: BN or GN
  data: phantom
  section: 2
  table: s/table.md
  row: BN − GN at the small batch
  column: mean [95 % CI]
  count: seeds in the claimed direction
  verdict_column: verdict
- question: a recipe
  data: real
  section: 0
  text: s/summary.md
  pattern: 'over the (?P<n>\\d+) subjects.*?\\*\\*(?P<mean>[\\d.]+)\\*\\* \\[(?P<low>[\\d.]+), (?P<high>[\\d.]+)\\]'
  verdict: below the reference
  units: patients
"""


@pytest.fixture
def results(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "paired.csv").write_text(PAIRED)
    (tmp_path / "s" / "table.md").write_text(TABLE)
    (tmp_path / "s" / "summary.md").write_text(SUMMARY)
    (tmp_path / "answers.yaml").write_text(SPEC)
    return tmp_path


def test_committed_tables_match_the_result_files():
    """README's and REPORT's answers are what docs/results gives: regenerate with segbench findings."""
    diffs = update(RESULTS, DOCUMENTS, check=True)
    assert not diffs, "stale answers table; run: segbench findings docs/results --update README.md docs/REPORT.md\n" + (
        "\n".join(diffs)
    )


def test_every_row_reads_its_figures_from_a_file(results):
    rows = answers_table(results).splitlines()[2:]
    assert rows[0] == "| BN or not | phantom | **BN better** | Dice +0.035 [+0.018, +0.051] | 8 seeds | 1 |"
    assert rows[1] == "| BN or GN | phantom | **equivalent within ±0.02** | +0.001 [-0.002, +0.004] | 6 seeds | 2 |"
    assert rows[2] == "| a recipe | real | **below the reference** | 0.712 [0.650, 0.770] | 13 patients | 0 |"


def test_a_changed_result_file_changes_the_table_and_check_fails(results, tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n{BEGIN}\n{END}\nafter\n")
    assert update(results, [doc], check=False) == []
    assert "+0.035 [+0.018, +0.051]" in doc.read_text() and doc.read_text().endswith("after\n")
    assert update(results, [doc], check=True) == []
    (results / "s" / "paired.csv").write_text(PAIRED.replace("0.0351", "0.0401"))
    before = doc.read_text()
    diffs = update(results, [doc], check=True)
    assert len(diffs) == 1 and "+0.040 [+0.018, +0.051]" in diffs[0]
    assert doc.read_text() == before  # --check writes nothing


def test_a_verdict_that_changed_is_shown_as_the_file_says(results):
    (results / "s" / "paired.csv").write_text(PAIRED.replace("a > b", "inconclusive at 8 seeds"))
    assert "**inconclusive at 8 seeds**" in answers_table(results)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: (r / "s" / "paired.csv").unlink(), "not found"),
        (lambda r: (r / "s" / "paired.csv").write_text(PAIRED.splitlines()[0] + "\n"), "no row a='norm=batch'"),
        (lambda r: (r / "s" / "table.md").write_text("# empty\n"), "no table row"),
        (lambda r: (r / "s" / "summary.md").write_text("nothing pooled\n"), "does not match"),
        (lambda r: (r / "answers.yaml").unlink(), "answers.yaml not found"),
    ],
)
def test_a_missing_source_is_one_clear_error(results, change, message):
    change(results)
    with pytest.raises(SegbenchError, match=message):
        answers_table(results)


def test_a_file_without_a_block_changes_no_file(results, tmp_path):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text(f"{BEGIN}\n{END}\n")
    bad.write_text("no block\n")
    with pytest.raises(SegbenchError, match="no <!-- answers:begin -->.*no include block"):
        update(results, [good, bad], check=False)
    assert good.read_text() == f"{BEGIN}\n{END}\n"


def test_markdown_tables_are_read_by_header():
    (table,) = markdown_tables(TABLE)
    assert table[0]["seeds in the claimed direction"] == "2 of 6"


def test_cli_check_exits_1_on_drift_and_2_on_a_bad_folder(results, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"{BEGIN}\nold table\n{END}\n")
    run = [sys.executable, "-m", "segbench", "findings", str(results), "--update", str(doc), "--check"]
    stale = subprocess.run(run, capture_output=True, text=True)
    assert stale.returncode == 1 and "1 file(s) differ" in stale.stderr and "old table" in doc.read_text()
    missing = subprocess.run(run[:4] + [str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "answers.yaml not found" in missing.stderr


def test_the_cross_validation_summary_regenerates_from_its_fold_records(tmp_path):
    """docs/results/lgg_recipe/cv5.md is what scripts/cv_summary.py writes from the kept fold records."""
    record = RESULTS / "lgg_recipe" / "cv5"
    out = tmp_path / "cv5.md"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cv_summary.py"), str(record), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_text() == (RESULTS / "lgg_recipe" / "cv5.md").read_text()


def test_include_blocks_hold_the_kept_file_verbatim(results, tmp_path):
    doc = tmp_path / "REPORT.md"
    doc.write_text(
        "## 1\n<!-- include: s/table.md -->\nold\n<!-- end include -->\n"
        "## 2\n<!-- include: s/paired.csv -->\n<!-- end include -->\n"
    )
    assert update(results, [doc], check=False) == []
    text = doc.read_text()
    assert TABLE.rstrip("\n") in text and "old" not in text
    assert "```\n" + PAIRED.rstrip("\n") + "\n```" in text and text.endswith("<!-- end include -->\n")
    (results / "s" / "table.md").write_text(TABLE.replace("2 of 6", "3 of 6"))
    assert "3 of 6" in update(results, [doc], check=True)[0]
    doc.write_text("<!-- include: s/nowhere.md -->\n<!-- end include -->\n")
    with pytest.raises(SegbenchError, match="s/nowhere.md, not found"):
        update(results, [doc], check=False)


def test_a_declared_design_row_shows_no_effect_but_needs_its_file_to_say_so(results):
    (results / "s" / "design.yaml").write_text("# Declared before any of its runs (2026-12-07)\n")
    spec = {"question": "q", "data": "d", "section": "0d", "text": "s/design.yaml", "verdict": "declared, not run"}
    spec["pattern"] = r"Declared before any of its runs \(2026-12-07\)"
    from segbench.analysis.findings import answer

    row = answer(results, spec)
    assert (row.verdict, row.effect) == ("declared, not run", "–")
    (results / "s" / "design.yaml").write_text("# changed\n")
    with pytest.raises(SegbenchError, match="does not match"):
        answer(results, spec)


def test_check_without_files_to_check_is_one_line_exit_2(results):
    done = subprocess.run(
        [sys.executable, "-m", "segbench", "findings", str(results), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--check compares files" in done.stderr and done.stderr.count("\n") == 1
