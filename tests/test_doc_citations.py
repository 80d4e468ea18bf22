"""Docstrings and comments cite sources that exist: the paper or an upstream file, or a page under docs/.

Fails when a file cites one of the reference notes that are not part of the repository, cites a
``docs/X.md`` that does not exist or a section (``docs/X.md §N``) that the page does not have, or uses
a section mark (§) that belongs to no source (no paper or upstream reference just before it, and no
docs page of the file that has that section).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

#: Reference notes that live outside the repository (written by the project's people, not shipped).
OUTSIDE_NOTES = re.compile(r"prism_spec|cpu_facts|vlmevalkit_facts|\banchors(?:\.md|\s+(?:A\.\d|Part\b))")
DOC_REF = re.compile(r"docs/([\w\-]+\.md)(?:\s*§(\d+(?:\.\d+)?))?")


def scanned_files(repo: Path = REPO) -> list[Path]:
    """The package, the docs, the tests, the benchmark definitions and the grids (this file excepted)."""
    out: list[Path] = []
    for folder, patterns in (("prism_lab", ("*.py",)), ("docs", ("*.md",)), ("tests", ("*.py",)),
                             ("benchmarks", ("*.yaml", "*.py")), ("experiments", ("*.yaml",))):
        for pattern in patterns:
            out += sorted((repo / folder).rglob(pattern))
    this = Path(__file__).resolve()
    return [p for p in out if p.resolve() != this and "__pycache__" not in p.parts]


def section_numbers(page: Path) -> set[str]:
    """The numbers of a page's numbered headings (``## 6. ...`` -> 6, ``### 6.4 ...`` -> 6.4)."""
    heads = re.findall(r"^#+\s+(\d+(?:\.\d+)?)\.?\s", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return set(heads)


def problems(repo: Path = REPO) -> list[str]:
    found = []
    for path in scanned_files(repo):
        rel = path.relative_to(repo)
        text = path.read_text(encoding="utf-8")
        for no, line in enumerate(text.splitlines(), 1):
            for m in OUTSIDE_NOTES.finditer(line):
                found.append(f"{rel}:{no}: cites {m.group(0)!r}, which is not in the repository")
            for page, section in DOC_REF.findall(line):
                target = repo / "docs" / page
                if not target.is_file():
                    found.append(f"{rel}:{no}: cites docs/{page}, which does not exist")
                elif section and section not in section_numbers(target):
                    found.append(f"{rel}:{no}: cites docs/{page} §{section}, which that page does not have")
        if rel.parts[0] == "prism_lab" and "§" in text:
            found += _bare_section_problems(repo, rel, text)
    return found


#: A source named shortly before a § mark: a docs page, or a paper / upstream reference.
NEAR_SOURCE = re.compile(r"docs/[\w\-]+\.md|arXiv|et al\.|https?://")


def _bare_section_problems(repo: Path, rel: Path, text: str) -> list[str]:
    """Every ``§N`` of a package file belongs to a source: the nearest one named in the 300 characters before
    it (a paper or upstream reference, or a docs page that has section N), else a docs page the file cites
    (its module docstring then says that its § marks are sections of that page)."""
    pages = [repo / "docs" / page for page, _ in DOC_REF.findall(text)]
    pages = [p for p in pages if p.is_file()]
    known = set().union(*(section_numbers(p) for p in pages)) if pages else set()
    found = []
    for m in re.finditer(r"§(\d+(?:\.\d+)?)", text):
        line = text[:m.start()].count("\n") + 1
        near = list(NEAR_SOURCE.finditer(text, max(0, m.start() - 300), m.start()))
        if near and not near[-1].group(0).startswith("docs/"):
            continue  # a paper's or an upstream document's own section
        if near:
            page = repo / near[-1].group(0)
            if page.is_file() and m.group(1) in section_numbers(page):
                continue
        if not pages:
            found.append(f"{rel}:{line}: §{m.group(1)} names no source (a docs/ page, a paper or an upstream file)")
        elif m.group(1) not in known:
            found.append(f"{rel}:{line}: §{m.group(1)} is a section of none of {', '.join(sorted(p.name for p in pages))}")
    return found


def test_citations_point_at_sources_that_exist():
    assert problems() == []


def test_the_check_catches_each_kind_of_bad_citation(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## 1. One\n\n### 1.2 Sub\n")
    pkg = tmp_path / "prism_lab"
    pkg.mkdir()
    (pkg / "good.py").write_text('"""Formula of docs/page.md §1.2; see also §1."""\n')
    (pkg / "bad.py").write_text(
        '"""From prism_spec.md §6 (cpu_facts section 7; anchors A.3).\n\n'
        'See docs/missing.md and docs/page.md §9."""\n'
    )
    (pkg / "bare.py").write_text("# the loss of §6.4\n")
    (pkg / "unknown.py").write_text('"""See docs/page.md; the loss of §7."""\n')
    (pkg / "paper.py").write_text('"""Byte counts of ZeRO (Rajbhandari et al. 2020, §5)."""\n')
    for folder in ("tests", "benchmarks", "experiments"):
        (tmp_path / folder).mkdir()
    found = problems(tmp_path)
    assert not any("good.py" in f or "paper.py" in f for f in found), found
    for needle in ("bad.py:1: cites 'prism_spec'", "bad.py:1: cites 'cpu_facts'", "bad.py:1: cites 'anchors A.3'",
                   "bad.py:3: cites docs/missing.md", "bad.py:3: cites docs/page.md §9",
                   "bare.py:1: §6.4 names no source", "unknown.py:1: §7 is a section of none of page.md"):
        assert any(needle in f for f in found), (needle, found)


@pytest.mark.parametrize("page", ["prism_method.md", "rl_objectives.md", "cpu_notes.md", "vlmevalkit.md"])
def test_the_docs_pages_exist(page):
    assert (DOCS / page).is_file()
