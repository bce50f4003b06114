"""The doctor's two outputs: one line per finding, and ``--json``.

``doctor --json`` schema (stable; fields are only ever added; docs/DOCTOR.md
describes each check)::

    {
      "version": 1,
      "interface": str | null,
      "ok": bool,                              # no finding failed (exit code 0)
      "counts": {"ok": int, "warn": int, "fail": int},
      "findings": [{
          "check": "relays" | "udp" | "relay" | "nat" | "clock" | "mtu"
                   | "interface" | "agent" | "peer",
          "level": "ok" | "warn" | "fail",
          "subject": str | null,               # relay or peer key, or the interface
          "summary": str,                      # what the human line says
          "fix": str | null,                   # what a user can do about it
          "data": {...}                        # the check's figures (see DOCTOR.md)
      }],
      "nat": {
          "kind": "independent" | "dependent" | "unknown",   # as in status --json
          "behind_nat": bool | null,           # false: relays see our own address
          "family": "ipv4" | "ipv6" | null,
          "observed": [{"relay": str, "endpoint": str}]      # where each relay saw us
      },
      "facts": {                               # what was measured (facts.py)
          "interface": str | null, "wall": float, "relays_known": int,
          "relays": [{"public_key": str, "endpoint": str, "bootstrap": bool,
                      "outcome": "registered" | "not-allowed" | "timeout"
                                 | "refused" | "unreachable" | "bad-key",
                      "rtt_ms": float | null, "observed": str | null,
                      "local": str | null, "clock_offset_s": float | null,
                      "detail": str}],
          "key_source": "interface" | "throwaway",
          "interface_exists": bool | null, "mtu": int | null,
          "listen_port": int | null,
          "agent": {...} | null,               # status --json's entry for INTERFACE
          "notes": [str]
      }
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wgrelay.doctor.diagnose import NatVerdict, nat_to_json
from wgrelay.doctor.facts import Facts, facts_to_json
from wgrelay.doctor.findings import Finding, Level

SCHEMA_VERSION = 1
_LABEL = {Level.OK: "OK", Level.WARN: "WARN", Level.FAIL: "FAIL"}


def render_lines(findings: Sequence[Finding], notes: Sequence[str] = ()) -> str:
    """One line per finding: level, check, what was found, and the fix."""
    lines = []
    for f in findings:
        line = f"{_LABEL[f.level]:<4}  {f.check:9} {f.summary}"
        if f.fix:
            line += f" -> fix: {f.fix}"
        lines.append(line)
    lines += [f"note  {n}" for n in notes]
    return "\n".join(lines) + "\n"


def finding_to_json(f: Finding) -> dict[str, Any]:
    return {
        "check": f.check,
        "level": f.level.value,
        "subject": f.subject,
        "summary": f.summary,
        "fix": f.fix,
        "data": dict(f.data),
    }


def report_document(
    facts: Facts, findings: Sequence[Finding], verdict: NatVerdict
) -> dict[str, Any]:
    counts = {lvl.value: sum(f.level is lvl for f in findings) for lvl in Level}
    return {
        "version": SCHEMA_VERSION,
        "interface": facts.interface,
        "ok": counts[Level.FAIL.value] == 0,
        "counts": counts,
        "findings": [finding_to_json(f) for f in findings],
        "nat": nat_to_json(verdict),
        "facts": facts_to_json(facts),
    }
