"""docs/OPERATIONS.md shows the example config files in full: they must be
the packaged ones (packaging/config/*.toml), whose own test makes them list
every option. The copies had fallen behind by seven options (--capacity,
--min-share, --leg-relay, --budget, --operator-claim, --private and
--private-peer were in the files, not in the docs)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _body(path: Path) -> str:
    """The file without its header comment (up to the first blank line),
    which says what the text around the copy says."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(lines[lines.index("") + 1 :]) + "\n"


def _copy(doc: str, heading: str) -> str:
    start = doc.index("```toml\n", doc.index(heading)) + len("```toml\n")
    return doc[start : doc.index("```\n", start)]


@pytest.mark.parametrize(
    ("heading", "name"),
    [
        ("### Relay: `/etc/wgrelay/relay.toml`", "relay.toml"),
        ("### Agent: `/etc/wgrelay/wg0.toml`", "wg0.toml"),
    ],
)
def test_operations_md_shows_the_packaged_config(heading: str, name: str) -> None:
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    assert _copy(doc, heading) == _body(ROOT / "packaging" / "config" / name)
