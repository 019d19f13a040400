"""The README and docs/ hold together: every relative link points to a file that exists and,
with a #fragment, to a heading that file has (as GitHub names its anchors)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_LINES_MAX = 200
"""The README is a first page; the manual is docs/."""


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#+ +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def test_every_relative_link_resolves_to_a_file_and_heading() -> None:
    broken = {page.name: b for page in PAGES if (b := broken_links(page))}
    assert not broken, broken


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `make train` demo (issue 11)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md#the-make-train-demo-issue-11) [self](#page) [web](https://example.org/x)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [image](img/none.png)\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading #nowhere in other.md",
        "img/none.png: no such file",
    ]


def test_the_readme_is_a_first_page() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_LINES_MAX, f"README.md has {lines} lines; move detail to docs/"
