"""The codebase explains itself from a clone: every citation leads to a section that exists.

Code, tests, the bundled guest and the documents cite docs/abi.md as "ABI §N.M" and
docs/unicorn.md as "Unicorn §N.M" (docs/README.md).  These tests read every such citation and
check the section is a heading of its document, that nothing cites a document outside the
repository, that relative links in the Markdown files lead to files that exist, and that the
reading order in lgemu/__init__.py is the one in docs/architecture.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import lgemu

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCES = ("lgemu", "tests", "guest_kernel", "tools", "docs")
TEXT_SUFFIXES = {".py", ".c", ".h", ".S", ".md", ".lds", ""}
TOP_FILES = ("README.md", "SECURITY.md")

SECTION = r"§\d+(?:\.\d+)*"
SEPARATOR = r"(?:, | and | or |/|–)"
# A prefix, then a list of sections that all belong to the prefix's document.
CITATION = re.compile(rf"\b(ABI|Unicorn) ({SECTION}(?:{SEPARATOR}{SECTION})*)")
ANY_SECTION = re.compile(SECTION)
APPENDIX = re.compile(r"\bABI Appendix ([A-Z])\b")
DOCUMENT = {"ABI": DOCS / "abi.md", "Unicorn": DOCS / "unicorn.md"}
# Where references used to lead before docs/ existed; none may remain.  (Written in pieces so
# that this file does not match itself.)
OUTSIDE = ["unicorn" + "-notes", "lguest-abi" + ".md", "spike" + " O", "/work" + "/"]


def text_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES]
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and "build" not in path.parts
                    and "__pycache__" not in path.parts):
                if path.suffix == "" and not path.read_bytes()[:2] == b"#!" \
                        and path.name != "Makefile":
                    continue
                files.append(path)
    return files


def headings(doc: Path) -> tuple[set[str], set[str]]:
    """Section numbers ("3", "3.4") and appendix letters that `doc` has as headings."""
    sections, appendices = set(), set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#{2,4} (\d+(?:\.\d+)*)\.? ", line)
        if m:
            sections.add(m.group(1))
        m = re.match(r"#{2,4} Appendix ([A-Z])\b", line)
        if m:
            appendices.add(m.group(1))
    return sections, appendices


def citations(path: Path) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
    """(document, section, line) for every citation in `path`, and (text, line) for every
    section sign that no prefix claims.  Inside abi.md and unicorn.md a bare "§N" means the
    document itself."""
    own = {DOCS / "abi.md": "ABI", DOCS / "unicorn.md": "Unicorn"}.get(path)
    found, bare = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        claimed = set()
        for m in CITATION.finditer(line):
            for s in ANY_SECTION.finditer(m.group(2)):
                found.append((m.group(1), s.group()[1:], number))
            claimed.update(range(m.start(2), m.end(2)))
        for s in ANY_SECTION.finditer(line):
            if s.start() not in claimed:
                if own:
                    found.append((own, s.group()[1:], number))
                else:
                    bare.append((line.strip(), number))
    return found, bare


FILES = text_files()


def test_the_tree_cites_the_documents() -> None:
    """The checks below have something to check: the code really uses both documents."""
    kinds = {doc for path in FILES for doc, _, _ in citations(path)[0]}
    assert kinds == {"ABI", "Unicorn"}


def test_every_citation_names_an_existing_section() -> None:
    _, appendices = headings(DOCUMENT["ABI"])
    sections = {doc: headings(path)[0] for doc, path in DOCUMENT.items()}
    problems = []
    for path in FILES:
        where = path.relative_to(ROOT)
        found, bare = citations(path)
        problems += [f"{where}:{line}: a section sign without 'ABI' or 'Unicorn' "
                     f"(docs/README.md): {text}" for text, line in bare]
        problems += [f"{where}:{line}: {doc} §{section} is not a heading of "
                     f"{DOCUMENT[doc].relative_to(ROOT)}"
                     for doc, section, line in found if section not in sections[doc]]
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            problems += [f"{where}:{number}: ABI Appendix {m.group(1)} does not exist"
                         for m in APPENDIX.finditer(line) if m.group(1) not in appendices]
    assert not problems, "\n".join(problems)


def test_no_citation_leads_outside_the_repository() -> None:
    # Tests find the real kernels next to the repository (REPO_ROOT.parent / "shared"), never
    # through a relative path written out.
    words = [*OUTSIDE, "../" + "shared"]
    problems = [f"{path.relative_to(ROOT)}: {word}" for path in FILES
                for word in words if word in path.read_text(errors="replace")]
    assert not problems, "\n".join(problems)


MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_markdown_links_lead_to_files() -> None:
    broken = [f"{path.relative_to(ROOT)}: {target}" for path in FILES if path.suffix == ".md"
              for target in MARKDOWN_LINK.findall(path.read_text())
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, "\n".join(broken)


def numbered_paths(text: str) -> list[str]:
    return re.findall(r"^\d+\. `([^`]+)`", text, flags=re.MULTILINE)


def test_there_is_one_reading_order() -> None:
    architecture = (DOCS / "architecture.md").read_text()
    order = numbered_paths(architecture[architecture.index("## Reading order"):])
    assert len(order) >= 5
    assert numbered_paths(lgemu.__doc__ or "") == order
    for step in order:
        assert (ROOT / step).exists(), step
    readme = (ROOT / "README.md").read_text()
    assert "docs/architecture.md" in readme and not numbered_paths(readme)


def test_every_unicorn_probe_is_documented_and_every_documented_probe_exists() -> None:
    probes = set(re.findall(r"^def (test_\w+)", (ROOT / "tests" / "test_unicorn_behaviour.py")
                            .read_text(), flags=re.MULTILINE))
    named = set(re.findall(r"`(test_\w+)`", (DOCS / "unicorn.md").read_text()))
    assert probes and probes == named


def test_every_file_the_documents_name_exists() -> None:
    named = re.compile(r"`((?:lgemu|tests|tools|guest_kernel|firmware)/[\w./-]*)`")
    missing = [f"{path.relative_to(ROOT)}: {target}"
               for path in [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "SECURITY.md"]
               for target in named.findall(path.read_text())
               if not (ROOT / target.split(":")[0]).exists()]
    assert not missing, "\n".join(missing)
