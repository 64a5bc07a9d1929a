"""examples/stdlib_text_shift.py: the standard library's docstrings and comments as a two-domain text dataset that
``text-csv`` reads (examples/stdlib_text.yaml)."""

from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = runpy.run_path(str(EXAMPLES / "stdlib_text_shift.py"))

MODULE = '''"""Compress and decompress files in the gzip format, as the gzip program does.

>>> import gzip
"""

# Read the header first: it says how long the name of the original file is.
# The name ends at the first zero byte.
def read(path):
    """Open a gzip file and return its uncompressed contents as bytes."""
    return b""  # empty here

# Shared with the other archive formats of this folder.
'''


def test_docstring_paragraphs_and_comment_blocks_become_labelled_rows(tmp_path: Path):
    (tmp_path / "gzip.py").write_text(MODULE)
    package = tmp_path / "xml"
    (package / "tests").mkdir(parents=True)
    (package / "parser.py").write_text('"""Parse an XML document into a tree of elements."""\n'
                                       '# Shared with the other archive formats of this folder.\n')
    (package / "tests" / "test_parser.py").write_text('"""Tests are left out of the data entirely."""\n')
    rows = SCRIPT["collect"](tmp_path)
    assert sorted(rows) == [
        ("Compress and decompress files in the gzip format, as the gzip program does.", "archiving", "docstring"),
        ("Open a gzip file and return its uncompressed contents as bytes.", "archiving", "docstring"),
        ("Parse an XML document into a tree of elements.", "markup", "docstring"),
        ("Read the header first: it says how long the name of the original file is. The name ends at the first "
         "zero byte.", "archiving", "comment"),
    ]  # the doctest, the short comment and the comment under two chapters are left out


def test_the_written_file_trains_through_text_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("transmodal_text")
    import transmodal
    from transmodal.config import load_experiment

    monkeypatch.setattr(sys, "argv", ["stdlib_text_shift.py", str(tmp_path / "stdlib-text")])
    SCRIPT["main"]()
    with (tmp_path / "stdlib-text" / "stdlib.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert {row["domain"] for row in rows} == {"docstring", "comment"}
    assert len({row["label"] for row in rows}) == len(SCRIPT["CHAPTERS"])
    monkeypatch.chdir(tmp_path)  # the example's path is relative to where it runs
    experiment = load_experiment(EXAMPLES / "stdlib_text.yaml", [
        "trainer.epochs=1", "trainer.num_threads=1", f"output.dir={tmp_path / 'runs'}"])
    summary, _ = transmodal.train(experiment, quiet=True)
    assert 1 / len(SCRIPT["CHAPTERS"]) < summary["best"]["target/test"]["accuracy"] < 1


def test_shared_words_counts_occurrences_whose_word_the_other_domain_has():
    rows = [("Alpha beta gamma", "x", "docstring"), ("beta gamma delta delta", "x", "comment")]
    assert SCRIPT["shared_words"](rows, "docstring") == pytest.approx(2 / 3)
    assert SCRIPT["shared_words"](rows, "comment") == pytest.approx(2 / 4)
