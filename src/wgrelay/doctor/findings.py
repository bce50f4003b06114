"""What the diagnosis says: ``Finding``s with a ``Level``, and the small
helpers every check uses to name relays, peers and ports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wgrelay.doctor.facts import Facts, ProbeOutcome, RelayProbe
from wgrelay.endpoint import endpoint_str


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report."""

    check: str
    """relays | udp | relay | nat | clock | mtu | interface | agent | peer"""
    level: Level
    summary: str
    fix: str | None = None
    subject: str | None = None
    """The relay's or peer's key, or the interface, when the finding is about one."""
    data: Mapping[str, Any] = field(default_factory=dict)


def short(key: str) -> str:
    return f"{key[:8]}.."


def where(p: RelayProbe) -> str:
    return f"relay {short(p.key)} at {endpoint_str(p.endpoint)}"


def answered(p: RelayProbe) -> bool:
    """An authenticated answer came (a registration or a refusal of our key)."""
    return p.outcome in (ProbeOutcome.REGISTERED, ProbeOutcome.NOT_ALLOWED)


def port_text(facts: Facts) -> str:
    return str(facts.listen_port) if facts.listen_port else "WireGuard's listen port"
