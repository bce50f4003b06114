"""The corpus on disk: one datagram a file, as hex, with where it comes from.

Layout of tests/fuzz/corpus/::

    world.json          keys, addresses and clock the datagrams were made with
    relay/*.hex         seeds for the relay core (written by make_corpus)
    client/*.hex        seeds for a client link, as sent by its relay to p0
    found/relay/*.hex   inputs the fuzzer found (make_corpus --explore): new line
    found/client/*.hex  coverage (cov-*), a known bug (known-*), a new finding (crash-*)

A file is comment lines (``# key: value``) and one line of hex::

    # kind: control/register/p0-home
    # src: 198.51.100.10 40000
    2001000...
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from wgrelay.relay.admission import Addr

CORPUS_DIR = Path(__file__).parent / "corpus"
CORES = ("relay", "client")


@dataclass(frozen=True, slots=True)
class Seed:
    name: str
    kind: str
    data: bytes
    src: Addr | None


def format_addr(addr: Addr) -> str:
    return " ".join(str(x) for x in addr)


def parse_addr(text: str) -> Addr:
    host, *rest = text.split()
    return (host, *(int(x) for x in rest))


def encode_seed(kind: str, data: bytes, src: Addr | None) -> str:
    lines = [f"# kind: {kind}"]
    if src is not None:
        lines.append(f"# src: {format_addr(src)}")
    lines.append(data.hex())
    return "\n".join(lines) + "\n"


def decode_seed(name: str, text: str) -> Seed:
    meta: dict[str, str] = {}
    hexline = ""
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            hexline = line.strip()
    src = parse_addr(meta["src"]) if "src" in meta else None
    return Seed(name, meta.get("kind", ""), bytes.fromhex(hexline), src)


def load(core: str, root: Path = CORPUS_DIR) -> list[Seed]:
    """The generated seeds, then the found ones, each group in name order."""
    seeds = []
    for d in (root / core, root / "found" / core):
        if d.is_dir():
            seeds += [decode_seed(p.name, p.read_text()) for p in sorted(d.glob("*.hex"))]
    return seeds


def save_found(
    core: str, tag: str, kind: str, data: bytes, src: Addr | None, root: Path = CORPUS_DIR
) -> Path | None:
    """Keep an input the fuzzer found; the name is its content's hash (so
    finding it again changes nothing). None if it was already there."""
    text = encode_seed(kind, data, src)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = root / "found" / core / f"{tag}-{digest}.hex"
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
