"""``wgrelay doctor [INTERFACE]``: why a peer is direct or relayed, and what to do.

Three layers, as everywhere in wgrelay: ``gather`` (asyncio: real round
trips to the known relays from one socket, the interface, the agent's status
file) produces ``Facts``; ``diagnose`` (pure functions) turns them into
``Finding``s, each OK, WARN or FAIL with the fix a user can make; ``report``
prints one line per finding or the ``--json`` document. docs/DOCTOR.md
describes every check.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from wgrelay.doctor.diagnose import diagnose, exit_code
from wgrelay.doctor.gather import GatherConfig, gather_facts
from wgrelay.doctor.report import render_lines, report_document
from wgrelay.mesh.backend.base import check_interface_name

__all__ = ["run_doctor"]


def run_doctor(
    state_dir: Path,
    interface: str | None,
    *,
    as_json: bool = False,
    config: GatherConfig | None = None,
) -> int:
    """Gather, diagnose, print; 0 when nothing failed, 1 otherwise."""
    if interface is not None:
        check_interface_name(interface)  # a bad name is an error, not a finding
    facts = asyncio.run(gather_facts(state_dir, interface, config=config))
    findings, verdict = diagnose(facts)
    if as_json:
        print(json.dumps(report_document(facts, findings, verdict), indent=2, sort_keys=True))
    else:
        print(render_lines(findings, facts.notes), end="")
    return exit_code(findings)
