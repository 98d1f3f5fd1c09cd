"""The protocol and the source studies are documented in the repository, and every citation resolves."""

import json
import re

from busi_study.cli import REPO
from busi_study.info import SOURCE_STUDIES

PROTOCOL = REPO / "docs" / "protocol.md"
SOURCES = REPO / "docs" / "sources.md"
CITED = re.compile(r"protocol\.md ?§ ?(\d+)")


def cited_texts() -> dict[str, str]:
    """Every file of the repository that may cite the protocol: package, notebooks' cells, scripts, params, README."""
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "params").glob("*.yaml"),
             REPO / "README.md", REPO / "run_all.py"]
    out = {str(f.relative_to(REPO)): f.read_text() for f in files}
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        out[str(nb.relative_to(REPO))] = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
    return out


def protocol_sections() -> set[str]:
    return set(re.findall(r"^## §(\d+) ", PROTOCOL.read_text(), flags=re.M))


def test_every_cited_protocol_section_exists():
    sections = protocol_sections()
    assert sections >= {str(n) for n in range(1, 10)}, f"docs/protocol.md sections: {sorted(sections)}"
    missing = {(path, n) for path, text in cited_texts().items() for n in CITED.findall(text) if n not in sections}
    assert not missing, f"citations of protocol sections that docs/protocol.md lacks: {sorted(missing)}"


def test_no_citation_points_outside_the_repository():
    """The study design's PROTOCOL.md / SEEDS.md are not in the repository: cite docs/protocol.md, docs/sources.md."""
    outside = {path for path, text in cited_texts().items() if re.search(r"PROTOCOL(\.md)?|SEEDS\.md", text)}
    assert not outside, f"files citing the protocol outside the repository: {sorted(outside)}"


def test_the_citation_check_sees_a_missing_section(tmp_path):
    text = "see docs/protocol.md §12 for the rule"
    assert CITED.findall(text) == ["12"] and "12" not in protocol_sections()


def test_each_source_study_is_described_with_its_notebook():
    text = SOURCES.read_text()
    notebooks = {nb.stem for nb in (REPO / "notebooks").glob("*.ipynb")}
    for study in SOURCE_STUDIES:
        assert re.search(rf"^## .*\b{study}\b", text, flags=re.M), f"docs/sources.md has no section for {study}"
    named = set(re.findall(r"\b(\d\d_[a-z0-9_]+)\b", text))
    assert named and named <= notebooks, f"docs/sources.md names notebooks that do not exist: {sorted(named - notebooks)}"
