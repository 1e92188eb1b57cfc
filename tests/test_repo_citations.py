"""The repository cites only itself and the paper (docs/design.md, "Layers of the code").

Every tracked text file (code, tests, configs, Makefile, docs, benchmarks) is read:

- no citation of a document that is not in the repository: the section sign, `spec`-folder documents
  (`tokenizer.md`, `conventions.md`, `anchors.md`, `diffusion.md`, `ecosystem.md`, `style.md`) or issue numbers;
- every `docs/<file>.md` named exists, and every `(docs/<file>.md, "<title>")` citation names a `## ` or `### `
  heading of that file, exactly (a title wrapped over two comment or docstring lines is read joined);
- every repository path the layout documents (`docs/design.md`, `docs/interfaces.md`) name in backticks exists
  (`{a,b}` alternatives and `*` globs expanded; `<placeholder>` paths skipped), so they describe the current tree.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match itself.
_SECTION = "\u00a7"
FORBIDDEN = [
    re.compile(_SECTION),
    re.compile(r"\b(?:tokenizer|conventions|anchors|diffusion|ecosystem|style)\.md\b"),
    re.compile(r"(?<![\w/.])spec/"),
    re.compile(r"\bissue\s*#?\d+", re.IGNORECASE),
]
DOC_NAME = re.compile(r"docs/([\w-]+\.md)")
# A title starts with a letter or digit (so `"docs/x.md, " "..."` split over two Python string literals is not read
# as a citation of the text between them).
CITATION = re.compile(r'docs/([\w-]+\.md),\s+"([A-Za-z0-9][^"]{0,199})"')
MORE_TITLES = re.compile(r'\s*(?:,\s*|;\s*|and\s+)"([^"]{1,200})"')
WRAP = re.compile(r"\s*\n\s*(?:#\s*)?")  # a line break, with the next line's indentation and comment sign


def _title(raw: str) -> str:
    return WRAP.sub(" ", raw)


def _text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = []
    for name in names:
        path = ROOT / name.decode()
        if not name or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary (weights, fixtures, images)
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


LAYOUT_DOCS = ("docs/design.md", "docs/interfaces.md")
TREE_PATH = re.compile(
    r"`((?:vfmvae|lightning_modules|datamodules|callbacks|configs|scripts|benchmarks|tests|docs)/[^`\s:]*)"
)


def _alternatives(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",") for x in _alternatives(path[: m.start()] + alt + path[m.end() :])]


def missing_tree_paths(text: str, root: Path) -> list[tuple[int, str]]:
    """``(line, path)`` of every backticked repository path in ``text`` that matches nothing under ``root``."""
    bad = []
    for m in TREE_PATH.finditer(text):
        if "<" in m.group(1) or "%" in m.group(1):
            continue
        for path in _alternatives(m.group(1)):
            if not list(root.glob(path.rstrip("/").rstrip(".,;"))):
                bad.append((text.count("\n", 0, m.start()) + 1, path))
    return bad


def _headings(doc: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", doc.read_text(), re.M)}


def forbidden_citations(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for pattern in FORBIDDEN for m in pattern.finditer(text)]


def bad_doc_citations(text: str, docs: Path) -> list[tuple[int, str]]:
    """``(line, problem)`` for each docs file that does not exist and each title that is not a heading of it."""
    bad = []
    for m in DOC_NAME.finditer(text):
        if not (docs / m.group(1)).is_file():
            bad.append((text.count("\n", 0, m.start()) + 1, f"docs/{m.group(1)} does not exist"))
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        doc = docs / m.group(1)
        if not doc.is_file():
            continue  # reported above
        titles = [_title(m.group(2))]
        pos = m.end()
        while more := MORE_TITLES.match(text, pos):
            titles.append(_title(more.group(1)))
            pos = more.end()
        headings = _headings(doc)
        bad += [(line, f'docs/{m.group(1)} has no section "{t}"') for t in titles if t not in headings]
    return bad


FILES = _text_files()


def test_the_scan_reads_the_whole_tree():
    rel = {str(p.relative_to(ROOT)) for p in FILES}
    assert {"Makefile", "docs/design.md", "vfmvae/codec.py", "tests/conftest.py"} <= rel
    assert any(r.startswith("configs/") for r in rel) and any(r.startswith("benchmarks/") for r in rel)


def test_no_citation_of_documents_outside_the_repository():
    offences = [
        f"{p.relative_to(ROOT)}:{line}: {what!r}"
        for p in FILES
        if p != Path(__file__).resolve()
        for line, what in forbidden_citations(p.read_text())
    ]
    assert not offences, "cite the paper or a docs/ section instead:\n" + "\n".join(offences)


def test_every_docs_citation_names_an_existing_section():
    offences = [
        f"{p.relative_to(ROOT)}:{line}: {what}"
        for p in FILES
        if p != Path(__file__).resolve()
        for line, what in bad_doc_citations(p.read_text(), ROOT / "docs")
    ]
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("doc", LAYOUT_DOCS)
def test_the_layout_docs_name_existing_paths(doc):
    missing = missing_tree_paths((ROOT / doc).read_text(), ROOT)
    assert not missing, f"{doc} names paths that do not exist: " + ", ".join(f"{p} (line {n})" for n, p in missing)


def test_the_path_check_fires(tmp_path):
    (tmp_path / "vfmvae").mkdir()
    (tmp_path / "vfmvae" / "a.py").write_text("")
    text = "`vfmvae/a.py` `vfmvae/{a,b}.py` `vfmvae/*.py` `vfmvae/<name>.py`\n`docs/x.md`"
    assert missing_tree_paths(text, tmp_path) == [(1, "vfmvae/b.py"), (2, "docs/x.md")]


@pytest.mark.parametrize(
    "text",
    [
        "# see spec " + _SECTION + "3.4",
        "(tokenizer.md " + _SECTION + "4)",
        "`spec/conventions.md`",
        "written for " + "Issue 13",
        "see anchors.md",
    ],
)
def test_the_forbidden_patterns_fire(text):
    assert forbidden_citations(text)


def test_the_section_check_fires(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Right title\n\n### Sub, with comma\n")
    ok = '(docs/a.md, "Right title"), (docs/a.md, "Sub, with comma"); (docs/a.md, "Right title" and "Sub, with comma")'
    assert bad_doc_citations(ok, tmp_path) == []
    assert bad_doc_citations('# (docs/a.md, "Right\n    # title")\n(docs/a.md,\n "Sub, with\n comma")', tmp_path) == []
    problems = bad_doc_citations(
        'x\n(docs/a.md, "Wrong")\n(docs/b.md, "Right title")\n# (docs/a.md, "Right\n# titles")', tmp_path
    )
    assert sorted(line for line, _ in problems) == [2, 3, 4]
    assert bad_doc_citations('(docs/a.md, "Right title" and "A")', tmp_path) == [(1, 'docs/a.md has no section "A"')]
