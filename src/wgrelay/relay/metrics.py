"""Prometheus metrics for the relay, read from the core at scrape time.

Nothing is counted twice: the core keeps plain integers (no per-packet metric
objects on the data path) and this collector turns a ``get_stats()`` snapshot
into Prometheus families when scraped. The HTTP endpoint runs on the relay's
own event loop, so a scrape never reads the core from another thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wgrelay.relay.stats import RelayStats

log = logging.getLogger(__name__)


class RelayCollector(Collector):
    def __init__(self, stats: Callable[[], RelayStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self._stats()
        yield GaugeMetricFamily(
            "wgrelay_registrations", "Peers registered at this relay", value=st.registrations
        )
        sessions = GaugeMetricFamily("wgrelay_sessions", "Relayed sessions", labels=["state"])
        sessions.add_metric(["active"], st.sessions_active)
        sessions.add_metric(["pending"], st.sessions_pending)
        yield sessions
        yield CounterMetricFamily(
            "wgrelay_sessions_opened", "Sessions established", value=st.sessions_opened
        )
        yield CounterMetricFamily(
            "wgrelay_sessions_closed", "Sessions closed", value=st.sessions_closed
        )
        yield CounterMetricFamily(
            "wgrelay_forwarded_packets", "Data frames forwarded", value=st.packets_forwarded
        )
        yield CounterMetricFamily(
            "wgrelay_forwarded_bytes", "Data frame bytes forwarded", value=st.bytes_forwarded
        )
        control = CounterMetricFamily(
            "wgrelay_control_messages", "Control datagrams", labels=["direction"]
        )
        control.add_metric(["received"], st.control_received)
        control.add_metric(["sent"], st.control_sent)
        yield control
        yield CounterMetricFamily(
            "wgrelay_handshakes", "Public-key operations for new senders", value=st.handshakes
        )
        yield CounterMetricFamily(
            "wgrelay_port_latches",
            "Session ports latched to a verified WireGuard handshake (port mode)",
            value=st.port_latches,
        )
        yield CounterMetricFamily(
            "wgrelay_punches",
            "Coordinated direct tries (hole punching) told to both sides of a session",
            value=st.punches,
        )
        ports = GaugeMetricFamily(
            "wgrelay_port_sessions", "Established sessions with session ports", labels=["state"]
        )
        ports.add_metric(["offered"], st.port_sessions)
        ports.add_metric(["both_latched"], st.port_sessions_offloaded)
        ports.add_metric(["in_kernel"], st.offloaded_paths)
        yield ports
        yield GaugeMetricFamily(
            "wgrelay_ports_free", "Session ports left in --port-range", value=st.ports_free
        )
        yield GaugeMetricFamily(
            "wgrelay_streams_open",
            "Agents connected over TCP or TLS (networks that drop UDP)",
            value=st.streams_open,
        )
        cookies = CounterMetricFamily("wgrelay_cookies", "Stateless cookies", labels=["event"])
        cookies.add_metric(["sent"], st.cookies_sent)
        cookies.add_metric(["accepted"], st.cookies_accepted)
        yield cookies
        drops = CounterMetricFamily("wgrelay_drops", "Datagrams dropped", labels=["reason"])
        for reason, n in sorted(st.drops.items()):
            drops.add_metric([str(reason)], n)
        yield drops
        quota = CounterMetricFamily("wgrelay_quota_hits", "Limits reached", labels=["limit"])
        for limit, n in sorted(st.quota_hits.items()):
            quota.add_metric([limit], n)
        yield quota
        if st.budget_bytes:
            budget = GaugeMetricFamily(
                "wgrelay_budget_bytes", "The byte budget this period (--budget)", labels=["state"]
            )
            budget.add_metric(["total"], st.budget_bytes)
            budget.add_metric(["used"], st.budget_used)
            budget.add_metric(["left"], st.budget_left)
            yield budget
            yield GaugeMetricFamily(
                "wgrelay_budget_period_end_seconds",
                "When the budget's period ends and its count starts again (Unix time)",
                value=st.budget_period_end,
            )
        relays = GaugeMetricFamily("wgrelay_federation_relays", "Relays known", labels=["state"])
        relays.add_metric(["known"], st.relays_known)
        relays.add_metric(["live"], st.relays_live)
        yield relays
        yield GaugeMetricFamily(
            "wgrelay_location_records",
            "Location records held for other relays' peers",
            value=st.location_records,
        )
        fed = CounterMetricFamily(
            "wgrelay_federation_events", "Relay-to-relay messages and outcomes", labels=["event"]
        )
        for event, n in sorted(st.federation.items()):
            fed.add_metric([event], n)
        yield fed
        yield from _leg_families(st.legs)
        yield from _credit_families(st.credits)
        yield from _contention_families(st)


def _leg_families(legs: dict[str, int]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Multi-hop legs by role: entry (we opened it for our peer), exit (for
    a peer registered here, at another relay's request)."""
    roles = ("entry", "exit")
    open_ = GaugeMetricFamily("wgrelay_legs", "Established multi-hop legs", labels=["role"])
    opened = CounterMetricFamily("wgrelay_legs_opened", "Legs established", labels=["role"])
    packets = CounterMetricFamily(
        "wgrelay_leg_packets", "Data frames forwarded on legs (both ways)", labels=["role"]
    )
    nbytes = CounterMetricFamily(
        "wgrelay_leg_bytes", "Data frame bytes forwarded on legs (both ways)", labels=["role"]
    )
    for role in roles:
        open_.add_metric([role], legs.get(f"open_{role}", 0))
        opened.add_metric([role], legs.get(f"opened_{role}", 0))
        packets.add_metric([role], legs.get(f"packets_{role}", 0))
        nbytes.add_metric([role], legs.get(f"bytes_{role}", 0))
    refused = CounterMetricFamily(
        "wgrelay_legs_refused", "Leg requests refused, by why", labels=["reason"]
    )
    for what, n in sorted(legs.items()):
        if what.startswith("refused_"):
            refused.add_metric([what.removeprefix("refused_")], n)
    yield from (open_, opened, packets, nbytes, refused)


def _credit_families(c: dict[str, int]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Usage receipts (relay/credits.py): what was asked, stored and refused."""
    if not c:
        return  # no ledger
    events = CounterMetricFamily(
        "wgrelay_credits_events",
        "Receipt requests sent, receipts taken from peers, receipts stored (news, from "
        "peers and relays), duplicates, RECEIPTS batches spread, our operator claim sent",
        labels=["event"],
    )
    for event in ("requests_sent", "receipts_taken", "receipts_stored", "receipts_duplicate",
                  "batches_sent", "claims_sent"):  # fmt: skip
        events.add_metric([event], c.get(event, 0))
    refused = CounterMetricFamily(
        "wgrelay_credits_refused", "Receipts and claims refused, by why", labels=["reason"]
    )
    for what, n in sorted(c.items()):
        if what.startswith("refused_"):
            refused.add_metric([what.removeprefix("refused_")], n)
    yield events
    yield refused
    yield GaugeMetricFamily("wgrelay_credits_receipts", "Receipts held", value=c.get("held", 0))


def _contention_families(st: RelayStats) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Who came first at a full relay, and the bandwidth shares (contention.py)."""
    c = st.contention
    admitted = CounterMetricFamily(
        "wgrelay_contention_admitted",
        "Sessions admitted, by why: a free slot, or one taken from a session "
        "with less credit (higher_credit) or back for the lowest-credit reserve",
        labels=["reason"],
    )
    displaced = CounterMetricFamily(
        "wgrelay_contention_displaced",
        "Sessions that gave their slot to another at a full relay (SESSION_CLOSE PREEMPTED)",
        labels=["reason"],
    )
    for reason in ("free_slot", "higher_credit", "reserve"):
        admitted.add_metric([reason], c.get(f"admitted_{reason}", 0))
    for reason in ("higher_credit", "reserve"):
        displaced.add_metric([reason], c.get(f"displaced_{reason}", 0))
    yield admitted
    yield displaced
    yield CounterMetricFamily(
        "wgrelay_contention_refused",
        "Requests at a full relay with no session of less credit to take a slot from",
        value=c.get("refused_full", 0),
    )
    if st.capacity_bytes_per_s:
        yield GaugeMetricFamily(
            "wgrelay_capacity_bytes_per_second",
            "What all sessions may relay together (--capacity)",
            value=st.capacity_bytes_per_s,
        )
        rates = GaugeMetricFamily(
            "wgrelay_contention_bytes_per_second",
            "Last second: what the sessions wanted and used (charged bytes, both directions)",
            labels=["what"],
        )
        rates.add_metric(["demand"], c.get("demand_bytes_per_s", 0))
        rates.add_metric(["used"], c.get("used_bytes_per_s", 0))
        yield rates
        yield GaugeMetricFamily(
            "wgrelay_contended",
            "1 while demand exceeds --capacity and sessions share it by credit",
            value=c.get("contended", 0),
        )
        yield CounterMetricFamily(
            "wgrelay_contention_seconds",
            "Housekeeping ticks (seconds) spent sharing the capacity by credit",
            value=c.get("ticks_contended", 0),
        )


def make_registry(stats: Callable[[], RelayStats]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(stats))
    return registry


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP/1.0 endpoint: GET /metrics answers the text format."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # the whole exchange: a scraper that stops reading must not hold
            # its connection (and task) open for good
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
                line = request.split(b"\r\n", 1)[0].split()
                if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                    body = generate_latest(registry)
                    head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                else:
                    body = b"not found\n"
                    head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
