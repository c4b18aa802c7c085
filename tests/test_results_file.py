"""write_section: an experiment's part of a RESULTS.md is replaced in place; the rest of the file stays."""

from __future__ import annotations

from optimizer.results import write_section


def test_a_section_is_appended_then_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section(path, "## B\n\nfirst\n")
    assert path.read_text() == "## B\n\nfirst\n"
    path.write_text("# Title\n\n## A\n\nkept\n\n" + path.read_text() + "\n## C\n\nkept too\n")
    write_section(path, "## B\n\nsecond\n")
    assert path.read_text() == "# Title\n\n## A\n\nkept\n\n## B\n\nsecond\n\n## C\n\nkept too\n"
    write_section(path, "## D\n\nnew\n")
    assert path.read_text().endswith("## C\n\nkept too\n\n## D\n\nnew\n")
