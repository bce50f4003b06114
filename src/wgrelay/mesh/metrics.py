"""Prometheus metrics for the agent (``wgrelay up IFACE --metrics ADDR:PORT``).

Like the relay's (relay/metrics.py), nothing is counted for the metrics: at
scrape time ``agent_snapshot`` reads what the agent already keeps and
``agent_families`` turns that snapshot into Prometheus families. Per peer the
facts are the status document's (``status_document``, the one ``wgrelay
status`` shows), so the two views can never disagree; per relay they are the
registry's measurements (what ``list-relays`` shows) and the planner's links;
the proxies and the relay manager add their drop counters. The HTTP endpoint
is the relay's (``serve_metrics``) on the agent's own event loop, so a scrape
never reads the agent's state from another thread.

Every metric, its labels and its meaning: docs/METRICS.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wgrelay.client.link_config import LinkState
from wgrelay.client.proxy import ProxyCounters
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import ConfigError
from wgrelay.mesh.peer_path import PathKind
from wgrelay.mesh.status_doc import status_document
from wgrelay.relay.metrics import serve_metrics

if TYPE_CHECKING:
    from wgrelay.mesh.daemon import Agent

Family = GaugeMetricFamily | CounterMetricFamily

PATHS = tuple(k.value for k in PathKind)
"""Every value of the path label: each peer has one series per path, 1 for
the path it is on (a state set: ``sum by (path)`` counts peers per path)."""


@dataclass(frozen=True, slots=True)
class LinkFacts:
    registered: bool
    sessions: int
    sent: int
    received: int
    retransmits: int
    drops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RelayFacts:
    """What the agent knows of one relay it has dealt with."""

    key: str
    endpoint: str
    rtt_ms: float | None
    """The registry's smoothed ping RTT (what relay choice uses)."""
    consecutive_failures: int
    """Failed registrations/sessions since the last success (the registry's)."""
    successes: int
    role: str
    """"home", "standby" or "other" (the planner's)."""
    link: LinkFacts | None
    """None: no link open to the relay now."""


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    status: Mapping[str, Any]
    """``status_document``: per peer path, relay, mode, handshake, bytes, tries."""
    wall: float
    """Unix time of the snapshot (handshake ages are counted against it)."""
    relays: Sequence[RelayFacts]
    proxies: Sequence[tuple[str, ProxyCounters]]
    """Per relayed peer (base64 key) with a local proxy, its counters."""
    frames_dropped: int
    """Frames from relays that belonged to no session of ours."""
    receipts: Mapping[str, int] = field(default_factory=dict)
    """Usage receipts (client/receipts.py): ``signed``, ``trimmed`` (signed
    for less than the relay claimed), ``bytes``, and each refusal by reason."""


def agent_snapshot(agent: Agent) -> AgentSnapshot:
    """Read the agent's state (on its event loop; cheap enough per scrape)."""
    now, wall = agent.runtime.now(), agent.runtime.wall()
    status = status_document(agent, agent.info, now, wall)
    planner = agent.manager.planner
    links = planner.links()
    relays = []
    for r in agent.registry.all():
        link = links.get(r.key)
        if link is None and r.rtt_ms is None and not r.failures and not r.successes:
            continue  # learned by gossip, never dealt with: no series for it
        addr = planner.relay_addr(r.key) or r.endpoint
        role = (
            "home" if r.key == planner.home else "standby" if r.key == planner.standby else "other"
        )
        relays.append(
            RelayFacts(
                key=str(r.key),
                endpoint=endpoint_str(addr),
                rtt_ms=r.rtt_ms,
                consecutive_failures=r.failures,
                successes=r.successes,
                role=role,
                link=None
                if link is None
                else LinkFacts(
                    registered=link.state == LinkState.REGISTERED,
                    sessions=len(link.session_of),
                    sent=link.counters.sent,
                    received=link.counters.received,
                    retransmits=link.counters.retransmits,
                    drops=dict(link.counters.drops),
                ),
            )
        )
    proxies = []
    for key in agent.core.peers:
        c = agent.proxies.counters(key)
        if c is not None:
            proxies.append((str(key), c))
    return AgentSnapshot(
        status=status,
        wall=wall,
        relays=sorted(relays, key=lambda f: f.key),
        proxies=sorted(proxies, key=lambda kc: kc[0]),
        frames_dropped=agent.manager.frames_dropped,
        receipts={
            "signed": agent.receipts.signed,
            "trimmed": agent.receipts.trimmed,
            "bytes": agent.receipts.bytes_signed,
            **{f"refused_{why}": n for why, n in agent.receipts.refused.items()},
        },
    )


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def agent_families(snap: AgentSnapshot) -> Iterator[Family]:
    """The Prometheus families of one snapshot (pure: tests feed it recorded state)."""
    st = snap.status
    iface = str(st["interface"])
    yield from _interface_families(iface, st)
    yield from _peer_families(iface, st["peers"], snap.wall)
    yield from _relay_families(iface, snap.relays)
    yield from _proxy_families(iface, snap.proxies)
    dropped = _counter(
        "wgrelay_agent_relay_frames_dropped",
        "Frames from relays that matched no session of this agent",
        ["interface"],
    )
    dropped.add_metric([iface], snap.frames_dropped)
    yield dropped
    yield from _receipt_families(iface, snap.receipts)


def _receipt_families(iface: str, r: Mapping[str, int]) -> Iterator[Family]:
    """What relays asked us to sign and what we did: a relay claiming more
    than we saw shows as ``trimmed``, one asking for what we never carried
    with it as a refusal (credits)."""
    receipts = _counter(
        "wgrelay_agent_receipts",
        "Usage receipts asked for by relays: signed, trimmed (signed for less than the "
        "relay claimed), or refused by reason",
        ["interface", "outcome"],
    )
    for outcome in ("signed", "trimmed"):
        receipts.add_metric([iface, outcome], r.get(outcome, 0))
    for what, n in sorted(r.items()):
        if what.startswith("refused_"):
            receipts.add_metric([iface, what.removeprefix("refused_")], n)
    nbytes = _counter(
        "wgrelay_agent_receipt_bytes", "Bytes acknowledged in receipts signed", ["interface"]
    )
    nbytes.add_metric([iface], r.get("bytes", 0))
    yield from (receipts, nbytes)


def _interface_families(iface: str, st: Mapping[str, Any]) -> Iterator[Family]:
    info = _gauge(
        "wgrelay_agent_info", "The agent of an interface (value 1)", ["interface", "backend"]
    )
    info.add_metric([iface, str(st.get("backend") or "")], 1)
    yield info
    enabled = _gauge(
        "wgrelay_agent_relay_enabled",
        "1 if relay fallback is enabled for the interface (configure-relay), else 0",
        ["interface"],
    )
    enabled.add_metric([iface], 1 if st.get("relay_enabled") else 0)
    yield enabled


def _peer_families(iface: str, peers: Sequence[Mapping[str, Any]], wall: float) -> Iterator[Family]:
    lab = ["interface", "peer"]
    path = _gauge(
        "wgrelay_agent_peer_path", "1 for the path the peer is on, 0 for the others", [*lab, "path"]
    )
    relay = _gauge(
        "wgrelay_agent_peer_relay_info",
        "A relayed peer's relay and mode (value 1; only while relayed)",
        [*lab, "relay", "relay_endpoint", "mode"],
    )
    since = _gauge(
        "wgrelay_agent_peer_path_since_timestamp_seconds",
        "Unix time the peer went onto its current path",
        lab,
    )
    age = _gauge(
        "wgrelay_agent_peer_handshake_age_seconds",
        "Seconds since the peer's latest WireGuard handshake (absent: none yet)",
        lab,
    )
    rtt = _gauge(
        "wgrelay_agent_peer_rtt_seconds",
        "Measured RTT of the path in use (relayed: our leg to the relay; absent: not measured)",
        lab,
    )
    rx = _counter(
        "wgrelay_agent_peer_received_bytes", "Bytes WireGuard received from the peer", lab
    )
    tx = _counter("wgrelay_agent_peer_sent_bytes", "Bytes WireGuard sent to the peer", lab)
    tries = _counter(
        "wgrelay_agent_peer_upgrade_attempts",
        "Direct tries while the peer was relayed (probe-backs and coordinated ones)",
        lab,
    )
    nat = _gauge(
        "wgrelay_agent_peer_nat_info",
        "How our NAT and the peer's map WireGuard's socket, as the relay saw (value 1)",
        [*lab, "ours", "theirs"],
    )
    for p in peers:
        key = [iface, str(p["public_key"])]
        for kind in PATHS:
            path.add_metric([*key, kind], 1 if p["path"] == kind else 0)
        if p["path"] == PathKind.RELAYED.value and p.get("relay"):
            mode = str(p.get("relay_mode") or "framed").split()[0]
            relay.add_metric([*key, str(p["relay"]), str(p.get("relay_endpoint") or ""), mode], 1)
        since.add_metric(key, float(p["since"]))
        hs = p.get("latest_handshake")
        if isinstance(hs, int | float) and hs > 0:
            age.add_metric(key, max(0.0, wall - hs))
        if isinstance(p.get("rtt_ms"), int | float):
            rtt.add_metric(key, p["rtt_ms"] / 1000)
        if isinstance(p.get("rx_bytes"), int):
            rx.add_metric(key, p["rx_bytes"])
        if isinstance(p.get("tx_bytes"), int):
            tx.add_metric(key, p["tx_bytes"])
        tries.add_metric(key, int(p.get("upgrade_tries") or 0))
        n = p.get("nat") or {}
        nat.add_metric([*key, str(n.get("ours", "unknown")), str(n.get("peer", "unknown"))], 1)
    yield from (path, relay, since, age, rtt, rx, tx, tries, nat)


def _relay_families(iface: str, relays: Sequence[RelayFacts]) -> Iterator[Family]:
    lab = ["interface", "relay", "endpoint"]
    rtt = _gauge("wgrelay_agent_relay_rtt_seconds", "Smoothed ping RTT to the relay", lab)
    fails = _gauge(
        "wgrelay_agent_relay_consecutive_failures",
        "Failed registrations or sessions at the relay since its last success",
        lab,
    )
    ok = _counter(
        "wgrelay_agent_relay_successes",
        "Registrations and sessions that worked at the relay (kept across restarts)",
        lab,
    )
    registered = _gauge(
        "wgrelay_agent_relay_registered",
        "1 if the link to the relay is registered, else 0 (only relays with a link)",
        [*lab, "role"],
    )
    sessions = _gauge("wgrelay_agent_relay_sessions", "Sessions the relay carries for us", lab)
    control = _counter(
        "wgrelay_agent_relay_control_messages",
        "Control messages on the link to the relay",
        [*lab, "direction"],
    )
    retrans = _counter(
        "wgrelay_agent_relay_retransmits", "Control requests sent again for want of an answer", lab
    )
    drops = _counter(
        "wgrelay_agent_relay_link_drops",
        "Control datagrams from the relay dropped, by reason",
        [*lab, "reason"],
    )
    for r in relays:
        key = [iface, r.key, r.endpoint]
        if r.rtt_ms is not None:
            rtt.add_metric(key, r.rtt_ms / 1000)
        fails.add_metric(key, r.consecutive_failures)
        ok.add_metric(key, r.successes)
        if r.link is None:
            continue
        registered.add_metric([*key, r.role], 1 if r.link.registered else 0)
        sessions.add_metric(key, r.link.sessions)
        control.add_metric([*key, "sent"], r.link.sent)
        control.add_metric([*key, "received"], r.link.received)
        retrans.add_metric(key, r.link.retransmits)
        for reason, n in sorted(r.link.drops.items()):
            drops.add_metric([*key, reason], n)
    yield from (rtt, fails, ok, registered, sessions, control, retrans, drops)


def _proxy_families(iface: str, proxies: Sequence[tuple[str, ProxyCounters]]) -> Iterator[Family]:
    lab = ["interface", "peer", "direction"]
    packets = _counter(
        "wgrelay_agent_proxy_packets", "Packets through a relayed peer's local proxy (framed)", lab
    )
    size = _counter(
        "wgrelay_agent_proxy_bytes", "WireGuard bytes through a relayed peer's local proxy", lab
    )
    drops = _counter(
        "wgrelay_agent_proxy_drops",
        "Packets a local proxy did not pass on, by reason",
        ["interface", "peer", "reason"],
    )
    for peer, c in proxies:
        packets.add_metric([iface, peer, "to_relay"], c.to_relay_packets)
        packets.add_metric([iface, peer, "to_wireguard"], c.to_wg_packets)
        size.add_metric([iface, peer, "to_relay"], c.to_relay_bytes)
        size.add_metric([iface, peer, "to_wireguard"], c.to_wg_bytes)
        drops.add_metric([iface, peer, "no_route"], c.no_route)
        drops.add_metric([iface, peer, "foreign_source"], c.foreign_source)
        drops.add_metric([iface, peer, "held"], c.held)
    yield from (packets, size, drops)


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Family]:
        return agent_families(agent_snapshot(self._agent))


def make_agent_registry(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry


async def serve_agent_metrics(agent: Agent, endpoint: Endpoint) -> asyncio.Server:
    """``GET /metrics`` on ``endpoint`` for as long as the server is open."""
    try:
        return await serve_metrics(make_agent_registry(agent), *endpoint)
    except OSError as e:
        where = endpoint_str(endpoint)
        raise ConfigError(f"cannot serve metrics on {where}: {e.strerror}") from None
