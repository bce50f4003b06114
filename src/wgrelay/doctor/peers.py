"""The interface, its agent and each of its peers: why a peer is direct or
relayed, read from the agent's status (``wgrelay status --json``'s entry for
the interface, whose keys mesh/status.py documents), and what would change it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wgrelay.doctor.facts import Facts
from wgrelay.doctor.findings import Finding, Level, answered, port_text, short

HANDSHAKE_STALE_S = 180.0
"""WireGuard's REJECT_AFTER_TIME: an older session carries nothing."""


def status_peers(facts: Facts) -> list[dict[str, Any]]:
    agent = facts.agent or {}
    peers = agent.get("peers")
    return [p for p in peers if isinstance(p, dict)] if isinstance(peers, list) else []


def check_agent(facts: Facts) -> list[Finding]:
    iface = facts.interface
    if iface is None:
        return []
    out: list[Finding] = []
    if facts.interface_exists is False:
        out.append(
            Finding(
                "interface",
                Level.FAIL,
                f"no WireGuard interface {iface} here",
                "create it, or name one that exists (wg show interfaces)",
                subject=iface,
            )
        )
    agent = facts.agent or {}
    if not agent.get("agent_running"):
        out.append(
            Finding(
                "agent",
                Level.WARN,
                f"no agent running for {iface}: peers without a direct path get no relay",
                f"start one: wgrelay up {iface}",
                subject=iface,
            )
        )
        return out
    home = agent.get("home_relay")
    out.append(
        Finding(
            "agent",
            Level.OK if home else Level.WARN,
            f"agent running for {iface} (pid {agent.get('pid')}); home relay "
            + (f"{short(str(home))} at {agent.get('home_relay_endpoint')}" if home else "none"),
            None if home else "no relay registered: see the relay lines",
            subject=iface,
        )
    )
    if agent.get("relay_enabled") is False:
        out.append(
            Finding(
                "agent",
                Level.WARN,
                f"relay fallback is disabled for {iface}: peers without a direct path "
                "stay unconnected",
                f"wgrelay configure-relay --enable {iface}",
                subject=iface,
            )
        )
    if agent.get("udp_blocked") is True:
        # the agent's own verdict (client/fallback.py): every relay silent over
        # UDP, so it reached them over a stream; the doctor's probes may
        # still have got through (the block may be intermittent, or lifted)
        carrier = str(agent.get("home_relay_carrier") or "TCP/TLS").upper()
        out.append(
            Finding(
                "agent",
                Level.WARN,
                f"the agent for {iface} found UDP to relays blocked and reaches its home "
                f"relay over {carrier}: relayed packets wait behind each other (TCP) and "
                "cost more bandwidth",
                "allow outbound UDP to the relays' ports in this network's firewall "
                "(the agent goes back to UDP by itself)",
                subject=iface,
            )
        )
    out += [_peer_finding(facts, p) for p in status_peers(facts)]
    return out


def _peer_finding(facts: Facts, p: Mapping[str, Any]) -> Finding:
    key = str(p.get("public_key", "?"))
    path = str(p.get("path", "?"))
    reason = str(p.get("reason") or "")
    nat = p.get("nat")
    nat = nat if isinstance(nat, dict) else {}
    ours, theirs = str(nat.get("ours", "unknown")), str(nat.get("peer", "unknown"))
    data = {"path": path, "nat_ours": ours, "nat_peer": theirs, "reason": reason}
    head = f"peer {short(key)}"
    port = port_text(facts)
    hs = p.get("latest_handshake")
    stale = not isinstance(hs, int | float) or hs <= 0 or facts.wall - hs > HANDSHAKE_STALE_S
    if path == "direct":
        where = p.get("direct_endpoint") or p.get("endpoint") or "?"
        if stale:
            return Finding(
                "peer", Level.WARN,
                f"{head}: direct to {where}, but no WireGuard handshake for 3 minutes",
                "check the peer is up; the agent relays it once a handshake is missed",
                subject=key, data=data,
            )  # fmt: skip
        return Finding(
            "peer", Level.OK, f"{head}: direct to {where} ({reason})", subject=key, data=data
        )
    if path == "relayed":
        mode = str(p.get("relay_mode") or "framed").split()[0]
        via = f"relayed ({mode}) via {p.get('relay_endpoint') or '?'}"
        why, fix = _why_relayed(ours, theirs, port, p)
        level = Level.WARN
        if stale:
            why += "; no WireGuard handshake for 3 minutes"
            fix = "check the peer is up and its agent runs; " + fix
        return Finding("peer", level, f"{head}: {via}: {why}", fix, subject=key, data=data)
    if path == "probing":
        return Finding(
            "peer", Level.OK, f"{head}: trying a direct path now ({reason})",
            subject=key, data=data,
        )  # fmt: skip
    # relay-pending: neither direct nor relayed yet
    reached = [r for r in facts.relays if answered(r)]
    if facts.relays and not reached:
        why = "UDP to relays blocked (no relay answered)"
        fix = "allow outbound UDP to the relays; see the udp line"
    else:
        why = reason or "no path yet"
        fix = "check that the peer's agent runs and registers at a relay we can reach"
    return Finding("peer", Level.FAIL, f"{head}: no path: {why}", fix, subject=key, data=data)


def _why_relayed(ours: str, theirs: str, port: str, p: Mapping[str, Any]) -> tuple[str, str]:
    """Why a relayed peer is not direct, and what would change it."""
    dep = "dependent"
    if ours == dep and theirs == dep:
        return (
            "both NATs are symmetric (map per destination): direct is impossible",
            f"forward UDP port {port} on one side (here, or the peer's {port} there) "
            "to its WireGuard host",
        )
    if ours == dep:
        return (
            "our NAT is symmetric: the peer cannot predict our port, and its NAT "
            "filters what it did not send to",
            f"forward UDP port {port} on our NAT to this host",
        )
    if theirs == dep:
        return (
            "the peer's NAT is symmetric: we cannot predict its port, and our NAT "
            "filters what we did not send to",
            f"forward UDP port {port} on our NAT to this host (then the peer reaches us)",
        )
    last = p.get("last_upgrade")
    tried = f" (last try: {last})" if last else ""
    return (
        f"no direct try has worked yet{tried}",
        "the agent keeps trying (30 s, then less often, up to every 15 min); if it never "
        f"goes direct, UDP between the two is filtered: forward UDP port {port} on one side",
    )
