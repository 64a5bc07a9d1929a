"""A real technical-text shift that needs no download: Python's own standard library, documented two ways.

    python examples/stdlib_text_shift.py stdlib-text            # writes stdlib-text/stdlib.csv
    transmodal train examples/stdlib_text.yaml                  # comments (labelled) -> docstrings

Every sample is a sentence or paragraph the CPython developers wrote about a module of the standard library that
this Python carries, labelled with the chapter of the Library Reference that documents the module (text
processing, numeric, file access, archiving, concurrency, ...; https://docs.python.org/3/library/index.html).
The two domains are the two registers of that text:

- ``docstring``: a paragraph of a module's, class's or function's docstring, prose written for the reader of the
  documentation ("Return a new Decimal whose value is the exponential of the operand.");
- ``comment``: a block of ``#`` comments, written for the next maintainer, terse and about the code beside it
  ("Skip the header if the file has one.").

Both describe the same modules, so the classes are shared; what shifts is the register and the vocabulary. A text
that occurs in several modules of different chapters is dropped, one that repeats within a domain kept once.
What the file holds depends on the Python version (the measurements in the README: CPython 3.11.7).
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import re
import sysconfig
import tokenize
from collections import Counter
from pathlib import Path

# The Library Reference's chapters, each with modules written in Python that it documents.
CHAPTERS: dict[str, tuple[str, ...]] = {
    "text": ("string", "re", "difflib", "textwrap", "stringprep", "rlcompleter", "gettext", "locale"),
    "datatypes": ("datetime", "calendar", "collections", "heapq", "bisect", "weakref", "types", "copy", "pprint",
                  "reprlib", "enum", "graphlib"),
    "numeric": ("numbers", "decimal", "_pydecimal", "fractions", "random", "statistics"),
    "files": ("pathlib", "posixpath", "ntpath", "genericpath", "fileinput", "stat", "filecmp", "tempfile", "glob",
              "fnmatch", "linecache", "shutil"),
    "persistence": ("pickle", "copyreg", "shelve", "dbm", "sqlite3", "pickletools"),
    "archiving": ("gzip", "bz2", "lzma", "zipfile", "tarfile", "_compression"),
    "formats": ("csv", "configparser", "tomllib", "netrc", "plistlib"),
    "concurrency": ("threading", "multiprocessing", "concurrent", "subprocess", "sched", "queue", "contextvars"),
    "email": ("email", "mailbox", "mimetypes", "base64", "quopri", "smtplib", "poplib", "imaplib"),
    "markup": ("html", "xml"),
    "internet": ("urllib", "http", "ftplib", "uuid", "socketserver", "xmlrpc", "ipaddress", "ssl", "socket",
                 "selectors"),
    "devtools": ("typing", "pydoc", "doctest", "unittest", "bdb", "pdb", "timeit", "trace", "cProfile", "profile",
                 "pstats"),
    "language": ("ast", "symtable", "token", "keyword", "tokenize", "tabnanny", "pyclbr", "py_compile", "compileall",
                 "dis", "inspect", "importlib", "pkgutil", "modulefinder", "runpy", "zipimport"),
}
MIN_WORDS = 4  # shorter texts ("XXX", "Helper.") say nothing of their module
_SPACE = re.compile(r"\s+")


def module_files(library: Path, module: str) -> list[Path]:
    """The source files of a module or package, its tests left out; none when this Python lacks it."""
    single = library / f"{module}.py"
    if single.is_file():
        return [single]
    return [path for path in sorted((library / module).rglob("*.py"))
            if not {"test", "tests", "idle_test"} & set(path.relative_to(library).parts)]


def docstrings(source: str) -> list[str]:
    """Every paragraph of every docstring, doctest examples left out."""
    paragraphs = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            for paragraph in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                paragraphs.append(_SPACE.sub(" ", paragraph).strip())
    return [text for text in paragraphs if len(text.split()) >= MIN_WORDS and not text.startswith(">>>")]


def comments(source: str) -> list[str]:
    """Every block of comments on consecutive lines, as one text."""
    blocks: list[list[str]] = []
    previous_line = -2
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.start[0] == previous_line + 1 and blocks:
                blocks[-1].append(text)
            else:
                blocks.append([text])
            previous_line = token.start[0]
    texts = [_SPACE.sub(" ", " ".join(block)).strip() for block in blocks]
    return [text for text in texts if len(text.split()) >= MIN_WORDS and not text.startswith("!")]  # not #!/usr/bin


def collect(library: Path) -> list[tuple[str, str, str]]:
    """(text, chapter, domain) rows; a text found under two chapters is dropped, a repeated one kept once."""
    chapters_of: dict[tuple[str, str], set[str]] = {}
    for chapter, modules in CHAPTERS.items():
        for module in modules:
            for path in module_files(library, module):
                source = path.read_text(encoding="utf-8")
                for domain, texts in (("docstring", docstrings(source)), ("comment", comments(source))):
                    for text in texts:
                        chapters_of.setdefault((text, domain), set()).add(chapter)
    return [(text, chapters.pop(), domain) for (text, domain), chapters in chapters_of.items() if len(chapters) == 1]


def shared_words(rows: list[tuple[str, str, str]], domain: str) -> float:
    """The fraction of ``domain``'s word occurrences whose word occurs in the other domain too."""
    words = {name: Counter() for name in ("docstring", "comment")}
    for text, _, text_domain in rows:
        words[text_domain].update(re.findall(r"[a-z]+", text.lower()))
    other = words["comment" if domain == "docstring" else "docstring"]
    return sum(count for word, count in words[domain].items() if word in other) / max(1, words[domain].total())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write stdlib.csv")
    folder = parser.parse_args().folder
    rows = collect(Path(sysconfig.get_paths()["stdlib"]))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "stdlib.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label", "domain"])
        writer.writerows(rows)
    counts = Counter(domain for _, _, domain in rows)
    print(f"wrote {folder / 'stdlib.csv'}: {counts['docstring']} docstring paragraphs, {counts['comment']} comment "
          f"blocks, {len(CHAPTERS)} chapters; {shared_words(rows, 'docstring'):.0%} of the docstrings' word "
          f"occurrences occur in comments too, {shared_words(rows, 'comment'):.0%} of the comments' in docstrings")


if __name__ == "__main__":
    main()
