"""The hand-written documents cite figures only from the generated reports, and their links resolve.

A figure (a number with a decimal point) in a hand-written README must appear in a report that
``scripts/reproduce.py`` (or ``scripts/ranking_study.py``) generated: in the report folders under ``docs/results``
that its paragraph links to, or, when the paragraph links to none, in any of them. "Appear" means the same digits
in a generated table (``table.md``, ``ranking_study.md``, a generated ``README.md``, ``machine.md``) or a value of a
generated CSV or JSON file (a stage summary the report copied) that rounds to it. A re-made report whose numbers moved therefore fails this test until the prose
quoting it is updated. The figures that are no result of ours (the paper's, settings, versions) are listed with
the reason.
"""

from __future__ import annotations

import csv
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

#: The hand-written documents that cite results.
CITING = ("README.md", "docs/results/README.md", "bundles/fets/docs/README.md", "bundles/iseg/docs/README.md")

#: Figures that are not results of the generated reports, per document: figure -> why.
NOT_RESULTS: dict[str, dict[str, str]] = {
    "README.md": {"3.10": "the Python version"},
    "docs/results/README.md": {
        "4.37": "the paper's FeTS2021 gain", "1.81": "the paper's iSeg-2019 gain",
        "47.7": "a replaced report, quoted from git history (7881683:docs/results/study/table.md)",
        "50.7": "a replaced report, quoted from git history (7881683:docs/results/control/table.md)",
        "0.5": "a threshold (Dice 0.5, 0.5 points)", "0.05": "a threshold (information below 0.05)",
        "0.3": "the range a CI spans, read off the table", "0.9": "the range a CI spans, read off the table",
        "44.4": "the time of a replaced quick run, quoted from git history",
    },
    "bundles/fets/docs/README.md": {"0.0005": "a learning rate in a command", "2105.05874": "an arXiv id",
                                    "2211.02701": "an arXiv id", "1.96": "the normal quantile of a 95% interval"},
    "bundles/iseg/docs/README.md": {"0.0005": "a learning rate in a command", "2211.02701": "an arXiv id",
                                    "1.96": "the normal quantile of a 95% interval"},
}

_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")
_FIGURE = re.compile(r"(?<![\w.\-+/])[+-]?(\d+\.\d+)(?![\w.])")
_LINKED_REPORT = re.compile(r"(?:docs/results/|\]\()(\w+)/")
_PROFILE = re.compile(r"--profile (\w+)")


def _is_generated(path: Path) -> bool:
    if path.suffix not in (".md", ".csv", ".json"):
        return False
    return path.name != "README.md" or "do not edit by hand" in path.read_text(encoding="utf-8")[:400]


@cache
def _figures_of(folder: Path) -> frozenset[str]:
    """Every figure the generated files under ``folder`` hold: table digits, and CSV values rounded to 1-4 places."""
    found: set[str] = set()
    for path in sorted(folder.rglob("*")):
        if not (path.is_file() and _is_generated(path)):
            continue
        if path.suffix == ".md":
            found.update(_FIGURE.findall(path.read_text(encoding="utf-8")))
            continue
        if path.suffix == ".json":
            values = [float(v) for v in _NUMBER.findall(path.read_text(encoding="utf-8"))]
        else:
            with path.open(newline="", encoding="utf-8") as handle:
                values = [float(cell) for row in csv.reader(handle) for cell in row if _NUMBER.fullmatch(cell)]
        found.update(f"{abs(value):.{places}f}" for value in values for places in (1, 2, 3, 4))
    return frozenset(found)


def _paragraphs(text: str) -> list[str]:
    """Blocks that start at a heading or a bold lead-in (``**...``): the unit a figure's report links are read in."""
    return re.split(r"\n(?=\*\*|#)", text)


def _unsourced_figures(document: str) -> list[str]:
    reports = {p.name: p for p in RESULTS.iterdir() if p.is_dir()}
    exempt = NOT_RESULTS.get(document, {})
    missing = []
    for paragraph in _paragraphs((REPO / document).read_text(encoding="utf-8")):
        linked = (set(_LINKED_REPORT.findall(paragraph)) | set(_PROFILE.findall(paragraph))) & set(reports)
        allowed = set().union(*(_figures_of(reports[name]) for name in linked)) if linked else _figures_of(RESULTS)
        for figure in _FIGURE.findall(paragraph):
            if figure not in allowed and figure not in exempt:
                where = ", ".join(sorted(linked)) or "any report"
                missing.append(f"{figure} (looked in {where}): {paragraph.strip().splitlines()[0][:80]}")
    return missing


@pytest.mark.parametrize("document", CITING)
def test_every_figure_of_a_hand_written_document_comes_from_a_generated_report(document: str) -> None:
    missing = _unsourced_figures(document)
    assert not missing, f"{document}: figures found in no generated report it links to:\n  " + "\n  ".join(missing)


def test_a_figure_that_no_report_holds_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a figure that drifted from its table is reported, the one that did not is not."""
    quick = (RESULTS / "quick" / "table.md").read_text(encoding="utf-8")
    real = _FIGURE.findall(quick)[0]
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "doc.md").write_text(f"**A claim** ([table](quick/table.md)): {real} and 987.6 points.\n")
    assert [m.split(" ")[0] for m in _unsourced_figures("doc.md")] == ["987.6"]


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", CITING + ("docs/method.md", "docs/benchmarks.md", "docs/architecture.md",
                                               "docs/reuse_and_resume.md", "docs/results/confirm/README.md"))
def test_the_relative_links_of_a_document_resolve(document: str) -> None:
    path = REPO / document
    broken = [target for target in _LINK.findall(path.read_text(encoding="utf-8"))
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, f"{document}: links to missing files: {broken}"
