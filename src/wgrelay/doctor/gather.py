"""Gathering the doctor's facts: the thin asyncio layer over the client's link.

One UDP socket per address family talks to every relay probed, so the
addresses the relays report (REGISTERED's ``observed``) are the NAT's
mappings of *one* local socket towards several destinations: the input of
``classify_mapping``. Each relay gets its own ``RelayLink`` (the agent's
sans-I/O client core: sealing, cookies, retransmission, clock correction),
driven here as ``RelayClient`` drives it, but with the socket shared: a
datagram goes to the link of the relay it came from.

Per relay: an authenticated REGISTER (unlisted: no location record; no
incoming sessions), then a few PINGs for the RTT (or, when the relay refuses
the key, public discovery queries, which any key may make). Every
authenticated reply's timestamp is read once more with the same channel keys,
for the clock offset (the link checks them, but keeps no figure). A relay
that stays silent is asked once more from a connected socket, where an ICMP
port unreachable surfaces as ECONNREFUSED: refused and silent are told apart.

Nothing is written: the registry is read, the agent's status file is read,
and the registration at each relay expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wgrelay.client.events import (
    DiscoveryAnswered,
    LinkEvent,
    LinkRegistered,
    LinkRejected,
    PingTimedOut,
    QueryFailed,
    RttMeasured,
)
from wgrelay.client.link import LinkConfig, RelayLink, Role
from wgrelay.client.udp import resolve_endpoint
from wgrelay.discovery.reach import has_route
from wgrelay.discovery.registry import KnownRelay, RegistryStore
from wgrelay.discovery.selection import relay_score
from wgrelay.doctor.facts import Facts, ProbeOutcome, RelayProbe
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError, WgRelayError
from wgrelay.keys import PrivateKey, relay_x25519_public
from wgrelay.mesh.backend.base import read_mtu
from wgrelay.mesh.backend.detect import detect_backend
from wgrelay.mesh.status import collect_status
from wgrelay.proto.constants import MsgType
from wgrelay.proto.envelope import derive_client_keys, open_control, parse_control_header
from wgrelay.proto.punch import mapping_probe
from wgrelay.transport.base import Addr, DatagramTransport, Runtime
from wgrelay.transport.udp import AsyncioRuntime

_COOKIE_REPLY = int(MsgType.COOKIE_REPLY)


@dataclass(frozen=True, slots=True)
class GatherConfig:
    answer_timeout_s: float = 3.0
    """How long a relay may take to answer the REGISTER (retransmitted)."""
    ping_timeout_s: float = 1.0
    pings: int = 3
    """Round trips per relay; the best counts (the first may carry a cookie detour)."""
    refusal_wait_s: float = 1.0
    """How long to wait for an ICMP refusal from a silent relay."""
    max_relays: int = 8
    """Bootstrap relays first, then the best by score."""


class _Probe:
    """One relay's link on a shared socket, and what its replies showed."""

    def __init__(
        self, relay: KnownRelay, endpoint: Endpoint, addr: Addr, key: PrivateKey,
        loop: asyncio.AbstractEventLoop, now: float, wall: float,
    ) -> None:  # fmt: skip
        self.relay = relay
        self.endpoint = endpoint
        self.addr = addr
        self.link = RelayLink(key, relay.key, LinkConfig(accept_incoming=False), now=now, wall=wall)
        self.link.set_role(Role.UNLISTED, now)  # no location record for a probe
        self._keys = derive_client_keys(
            key.public_key().raw, key.raw, relay_x25519_public(relay.key)
        )
        self._relay_x = relay_x25519_public(relay.key)
        self._loop = loop
        self.stamps: list[tuple[float, float]] = []
        """(the relay's timestamp, our wall clock at arrival), in seconds."""
        self.unauthenticated = 0
        self.timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[Callable[[LinkEvent], bool], asyncio.Future[LinkEvent]]] = []

    def note(self, data: bytes, wall: float) -> None:
        """Read the relay's timestamp of an authenticated reply (not the link's job)."""
        if data[:1] == bytes((_COOKIE_REPLY,)):
            return  # unauthenticated by design: proves the address, not the key
        try:
            hdr = parse_control_header(data)
            if hdr.sender.raw != self._relay_x:
                raise RemoteProtocolError("wrong sender")
            ts_us, _ = open_control(data, hdr, self._keys)
        except RemoteProtocolError:
            self.unauthenticated += 1
            return
        self.stamps.append((ts_us / 1_000_000, wall))

    def dispatch(self, ev: LinkEvent) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and pred(ev):
                fut.set_result(ev)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def wait(self, pred: Callable[[LinkEvent], bool], timeout: float) -> LinkEvent:
        fut: asyncio.Future[LinkEvent] = self._loop.create_future()
        self._waiters.append((pred, fut))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            fut.cancel()


class ProbeSocket:
    """One UDP socket shared by the links of several relays (one family)."""

    def __init__(self, runtime: Runtime, host: str, wall: Callable[[], float]) -> None:
        self.runtime = runtime
        self._wall = wall
        self.probes: dict[tuple[str, int], _Probe] = {}
        self._dirty: set[tuple[str, int]] = set()
        self.transport: DatagramTransport = runtime.open_udp(host, 0, self)

    @property
    def port(self) -> int:
        return int(self.transport.local_address[1])

    def add(self, relay: KnownRelay, endpoint: Endpoint, addr: Addr, key: PrivateKey) -> _Probe:
        now = self.runtime.now()
        probe = _Probe(relay, endpoint, addr, key, self.runtime.loop, now, self._wall())
        self.probes[(str(addr[0]), int(addr[1]))] = probe
        return probe

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        where = (str(addr[0]), int(addr[1]))
        probe = self.probes.get(where)
        if probe is None or not data:
            return  # only the relays we asked talk to this socket
        probe.note(data, self._wall())
        probe.link.receive(data, self.runtime.now())
        self._dirty.add(where)

    def batch_done(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for where in dirty:
            self.pump(self.probes[where])

    def pump(self, probe: _Probe) -> None:
        """Send what the link has, hand its events out, re-arm its timer."""
        for data in probe.link.datagrams_to_send():
            self.transport.sendto(data, probe.addr)
        while (ev := probe.link.next_event()) is not None:
            probe.dispatch(ev)
        for data in probe.link.datagrams_to_send():
            self.transport.sendto(data, probe.addr)
        if probe.timer is not None:
            probe.timer.cancel()
            probe.timer = None
        when = probe.link.next_timer()
        if when != float("inf"):
            probe.timer = self.runtime.loop.call_at(when, self._on_timer, probe)

    def _on_timer(self, probe: _Probe) -> None:
        probe.timer = None
        now = self.runtime.now()
        probe.link.sync_wall(now, self._wall())
        probe.link.handle_timer(now)
        self.pump(probe)

    def close(self) -> None:
        now = self.runtime.now()
        for probe in self.probes.values():
            if probe.timer is not None:
                probe.timer.cancel()
            probe.link.shutdown(now)
            for data in probe.link.datagrams_to_send():
                self.transport.sendto(data, probe.addr)
        self.transport.close()


# ------------------------------------------------------------ one relay


async def probe_relay(sock: ProbeSocket, probe: _Probe, cfg: GatherConfig) -> RelayProbe:
    """REGISTER, then round trips; or, if nothing authenticated comes, why not."""
    relay, loop = probe.relay, sock.runtime.loop
    local = _source_address(probe.addr, sock.transport.family, sock.port)
    base = RelayProbe(str(relay.key), probe.endpoint, relay.bootstrap, ProbeOutcome.TIMEOUT)
    probe.link.connect(sock.runtime.now())
    sock.pump(probe)
    try:
        ev = await probe.wait(
            lambda e: isinstance(e, LinkRegistered | LinkRejected), cfg.answer_timeout_s
        )
    except TimeoutError:
        if probe.unauthenticated:
            return replace(
                base,
                outcome=ProbeOutcome.BAD_KEY,
                detail=f"{probe.unauthenticated} datagrams that did not authenticate",
            )
        outcome, detail = await why_silent(probe.addr, sock.transport.family, cfg.refusal_wait_s)
        return replace(base, outcome=outcome, local=local, detail=detail)
    samples: list[float] = []
    if isinstance(ev, LinkRegistered):
        outcome, observed = ProbeOutcome.REGISTERED, ev.observed
        for _ in range(cfg.pings):
            probe.link.ping(sock.runtime.now())
            sock.pump(probe)
            with contextlib.suppress(TimeoutError):
                got = await probe.wait(
                    lambda e: isinstance(e, RttMeasured | PingTimedOut), cfg.ping_timeout_s
                )
                if isinstance(got, RttMeasured):
                    samples.append(got.rtt_s)
    else:
        # it refuses the key; the list of relays is public, so a discovery
        # query still makes an authenticated round trip to time
        outcome, observed = ProbeOutcome.NOT_ALLOWED, None
        for _ in range(cfg.pings):
            t0 = loop.time()
            qid = probe.link.query(sock.runtime.now(), want_relays=True)
            sock.pump(probe)
            with contextlib.suppress(TimeoutError):
                got = await probe.wait(_answers(qid), cfg.ping_timeout_s)
                if isinstance(got, DiscoveryAnswered):
                    samples.append(loop.time() - t0)
    rtt_s = min(samples) if samples else None
    return replace(
        base,
        outcome=outcome,
        rtt_ms=None if rtt_s is None else round(rtt_s * 1000, 3),
        observed=observed,
        local=local,
        clock_offset_s=clock_offset(probe.stamps, rtt_s),
    )


def _answers(qid: int) -> Callable[[LinkEvent], bool]:
    def pred(e: LinkEvent) -> bool:
        return isinstance(e, DiscoveryAnswered | QueryFailed) and e.query_id == qid

    return pred


def clock_offset(stamps: list[tuple[float, float]], rtt_s: float | None) -> float | None:
    """The relay's clock minus ours: each reply was stamped about half a
    round trip before it arrived; the median of the replies."""
    if not stamps:
        return None
    half = (rtt_s or 0.0) / 2
    return round(statistics.median(ts - (arrived - half) for ts, arrived in stamps), 3)


def _source_address(addr: Addr, family: int, port: int) -> Endpoint | None:
    """Our address towards ``addr`` (the kernel's route choice) with the
    probe socket's port: what a relay sees when no NAT is in between."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
        except OSError:
            return None
        return (str(s.getsockname()[0]), port)


async def why_silent(addr: Addr, family: int, wait_s: float) -> tuple[ProbeOutcome, str]:
    """A relay gave no authenticated answer: send it an (unanswered, stateless)
    MAPPING_PROBE from a connected socket, where an ICMP error is reported."""
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        try:
            s.connect(addr)
            s.send(mapping_probe(bytes(8)))
            async with asyncio.timeout(wait_s):
                await loop.sock_recv(s, 64)
        except ConnectionRefusedError:
            return ProbeOutcome.REFUSED, "ICMP port unreachable"
        except TimeoutError:
            return ProbeOutcome.TIMEOUT, "no answer, no ICMP error"
        except OSError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM):
                return ProbeOutcome.UNREACHABLE, e.strerror or str(e)
            return ProbeOutcome.TIMEOUT, e.strerror or str(e)
    # something answered the probe it never answers: not a wgrelay relay
    return ProbeOutcome.BAD_KEY, "an unexpected answer to an unauthenticated probe"


# ------------------------------------------------------------ the host


@dataclass(slots=True)
class _Local:
    exists: bool | None = None
    mtu: int | None = None
    listen_port: int | None = None
    key: PrivateKey | None = None
    notes: list[str] = field(default_factory=list)


def _read_interface(interface: str, agent_running: bool) -> _Local:
    """MTU, listen port and (when no agent runs there) the interface's key."""
    out = _Local(mtu=read_mtu(interface))
    try:
        info = detect_backend(interface).read(interface)
    except WgRelayError as e:
        out.exists = out.mtu is not None
        if out.exists:
            out.notes.append(f"cannot read WireGuard interface {interface}: {e}")
        return out
    out.exists = True
    out.listen_port = info.listen_port
    if not agent_running:
        # the key the relays' access policies admit; a running agent holds
        # its registrations with it, and a REGISTER from our socket would
        # move them here, so then the probes use a throwaway key
        out.key = info.private_key
    return out


def probe_endpoint(
    relay: KnownRelay, reachable: Callable[[Endpoint], bool] = has_route
) -> Endpoint:
    """Where the agent would reach the relay, so where to probe it: its first
    endpoint this host has a route for, else its first (the planner's rule,
    client/plan_links.py, and the MTU advice's, mesh/mtu.py)."""
    routed = [e for e in relay.endpoints if reachable(e)]
    return (routed or list(relay.endpoints))[0]


def _relays_to_probe(state_dir: Path, wall: float, limit: int) -> tuple[int, list[KnownRelay]]:
    db = state_dir / "relays.db"
    if not db.exists():
        return 0, []
    store = RegistryStore(db)
    try:
        registry = store.load()
    finally:
        store.close()
    relays = registry.get_available_relays(int(wall * 1000))
    relays.sort(key=lambda r: (not r.bootstrap, relay_score(r)))
    return len(relays), relays[:limit]


async def gather_facts(
    state_dir: Path,
    interface: str | None,
    *,
    runtime: Runtime | None = None,
    config: GatherConfig | None = None,
    wall: Callable[[], float] = time.time,
) -> Facts:
    """Measure everything the diagnosis needs. ``wall`` is our wall clock
    (injected: the tests move it to see the clock check work)."""
    rt = runtime if runtime is not None else AsyncioRuntime()
    cfg = config or GatherConfig()
    agent: dict[str, Any] | None = None
    local = _Local()
    if interface is not None:
        agent = collect_status(state_dir, interface)["interfaces"][0]
        running = bool(agent.get("agent_running"))
        local = await rt.run_blocking(lambda: _read_interface(interface, running))
    known, relays = await rt.run_blocking(
        lambda: _relays_to_probe(state_dir, wall(), cfg.max_relays)
    )
    key = local.key or PrivateKey.generate()
    sockets: dict[int, ProbeSocket] = {}
    probes: list[_Probe] = []
    tasks: list[asyncio.Task[RelayProbe]] = []
    notes = list(local.notes)
    try:
        for relay in relays:
            endpoint = probe_endpoint(relay)
            try:
                family, addr = resolve_endpoint(endpoint)
                if family not in sockets:
                    host = "::" if family == socket.AF_INET6 else "0.0.0.0"
                    sockets[family] = ProbeSocket(rt, host, wall)
            except OSError as e:
                notes.append(f"relay {relay.key.short()}: cannot probe: {e.strerror or e}")
                continue
            probes.append(sockets[family].add(relay, endpoint, addr, key))
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(probe_relay(sockets[_family_of(p.addr)], p, cfg)) for p in probes
            ]
    finally:
        for s in sockets.values():
            s.close()
    return Facts(
        interface=interface,
        wall=wall(),
        relays_known=known,
        relays=tuple(t.result() for t in tasks),
        key_source="interface" if local.key is not None else "throwaway",
        interface_exists=local.exists,
        mtu=local.mtu,
        listen_port=local.listen_port,
        agent=agent,
        notes=tuple(notes),
    )


def _family_of(addr: Addr) -> int:
    return socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
