"""What ``wgrelay doctor`` measured: plain, frozen facts, and their JSON form.

The gathering layer (gather.py) fills these from the network, the state
directory and the WireGuard interface; the diagnosis (diagnose.py) reads only
these. ``facts_to_json`` / ``facts_from_json`` round-trip them, so the
``facts`` object of ``doctor --json`` can be diagnosed again anywhere (the
unit tests do exactly that with recorded runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.mesh.backend.base import parse_endpoint


class ProbeOutcome(Enum):
    """How one relay answered our authenticated REGISTER (and pings)."""

    REGISTERED = "registered"
    """An authenticated REGISTERED (with the address it saw us at) and PONGs."""
    NOT_ALLOWED = "not-allowed"
    """An authenticated refusal (AUTH_FAILED): reachable, but it does not
    serve the key we probed with, so it told us no address."""
    TIMEOUT = "timeout"
    """No authenticated answer, and no ICMP refusal either: UDP is filtered on
    the way, the relay is down behind a firewall, or its key is not the one
    we know (it cannot read what we send, so it stays silent)."""
    REFUSED = "refused"
    """ICMP port unreachable: the host is up, nothing listens on that UDP port."""
    UNREACHABLE = "unreachable"
    """No route (host or network unreachable): we could not even send."""
    BAD_KEY = "bad-key"
    """Something answered from the relay's address, but never authenticated
    as the relay key we know: the registry's key is wrong."""


@dataclass(frozen=True, slots=True)
class RelayProbe:
    """One relay, as our probe socket saw it."""

    key: str
    endpoint: Endpoint
    bootstrap: bool
    outcome: ProbeOutcome
    rtt_ms: float | None = None
    """The best of a few authenticated round trips (PING/PONG, or public
    discovery queries when it refused our key)."""
    observed: Endpoint | None = None
    """Our public address and port as the relay saw them (REGISTERED)."""
    local: Endpoint | None = None
    """Our socket's own address towards this relay (source IP the kernel
    picks, the socket's port): equal to ``observed`` means no NAT."""
    clock_offset_s: float | None = None
    """The relay's clock minus ours, from the timestamps of its
    authenticated replies (half the RTT allowed for the way back)."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the diagnosis reads."""

    interface: str | None
    wall: float
    """When the facts were gathered (Unix time)."""
    relays_known: int
    """Relays in the state directory's registry (bootstrap and learned)."""
    relays: tuple[RelayProbe, ...] = ()
    """The relays probed (bootstrap first, then the best by score)."""
    key_source: str = "throwaway"
    """Whose key the probes used: "interface" (INTERFACE's own key, so
    allow-listed relays admit it; only while no agent runs there) or
    "throwaway" (a fresh key: never disturbs a running agent)."""
    interface_exists: bool | None = None
    """None: no INTERFACE asked about."""
    mtu: int | None = None
    listen_port: int | None = None
    agent: dict[str, Any] | None = None
    """The interface's entry of ``wgrelay status --json`` (None: no INTERFACE)."""
    notes: tuple[str, ...] = field(default=())
    """What could not be gathered, and why (shown with the findings it affects)."""


def _ep(ep: Endpoint | None) -> str | None:
    return endpoint_str(ep) if ep is not None else None


def _parse_ep(text: object) -> Endpoint | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"endpoint {text!r} is not a string")
    return parse_endpoint(text)


def probe_to_json(p: RelayProbe) -> dict[str, Any]:
    return {
        "public_key": p.key,
        "endpoint": endpoint_str(p.endpoint),
        "bootstrap": p.bootstrap,
        "outcome": p.outcome.value,
        "rtt_ms": p.rtt_ms,
        "observed": _ep(p.observed),
        "local": _ep(p.local),
        "clock_offset_s": p.clock_offset_s,
        "detail": p.detail,
    }


def facts_to_json(f: Facts) -> dict[str, Any]:
    return {
        "interface": f.interface,
        "wall": f.wall,
        "relays_known": f.relays_known,
        "relays": [probe_to_json(p) for p in f.relays],
        "key_source": f.key_source,
        "interface_exists": f.interface_exists,
        "mtu": f.mtu,
        "listen_port": f.listen_port,
        "agent": f.agent,
        "notes": list(f.notes),
    }


def _opt_float(v: object) -> float | None:
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a number")
    return float(v)


def _opt_int(v: object) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not an integer")
    return v


def facts_from_json(doc: dict[str, Any]) -> Facts:
    """The inverse of ``facts_to_json``; ValueError/KeyError on a bad document."""
    relays = tuple(
        RelayProbe(
            key=str(r["public_key"]),
            endpoint=parse_endpoint(str(r["endpoint"])),
            bootstrap=bool(r["bootstrap"]),
            outcome=ProbeOutcome(r["outcome"]),
            rtt_ms=_opt_float(r.get("rtt_ms")),
            observed=_parse_ep(r.get("observed")),
            local=_parse_ep(r.get("local")),
            clock_offset_s=_opt_float(r.get("clock_offset_s")),
            detail=str(r.get("detail", "")),
        )
        for r in doc["relays"]
    )
    agent = doc.get("agent")
    return Facts(
        interface=doc.get("interface"),
        wall=float(doc["wall"]),
        relays_known=int(doc["relays_known"]),
        relays=relays,
        key_source=str(doc.get("key_source", "throwaway")),
        interface_exists=doc.get("interface_exists"),
        mtu=_opt_int(doc.get("mtu")),
        listen_port=_opt_int(doc.get("listen_port")),
        agent=agent if isinstance(agent, dict) else None,
        notes=tuple(str(n) for n in doc.get("notes", ())),
    )
