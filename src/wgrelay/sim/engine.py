"""Moving datagrams through the topology in virtual time.

Theory of operation
-------------------
A datagram in flight (a ``_Flight``) walks a small state machine, one stage
per piece of the path::

    UPLINK (sender's access link) -> ROUTE (in the sender's realm)
      -> NAT_OUT -> WAN_UP -> ROUTE (one realm up) ...     while the destination
      -> WAN_DOWN -> NAT_IN -> ROUTE (one realm down) ...  is not in the realm
      -> DOWNLINK (receiver's access link) -> DELIVER

(plus HAIRPIN, when a packet from a LAN is addressed to its own box's public
address). Each stage is computed as soon as its result cannot depend on what
else happens in the meantime, and waits in the network's event queue until its
virtual time when it can:

* a link without a bandwidth cap is pure arithmetic (loss, delay, jitter,
  reordering do not depend on other packets), so it is computed at once;
* a capped link's queue must see packets in the order they reach it, so the
  flight waits until the virtual time it enters the link;
* every NAT decision (mapping, filtering, expiry) and the delivery itself
  happen exactly at the virtual time the packet reaches the box or the socket.

So a packet between two hosts on the internet costs one queued event, and one
more per NAT box on the way. The event queue is a heap ordered by (time,
sequence number), so packets due at the same instant keep the order they were
queued in (asyncio's own timer heap is not stable for equal times) and runs
are deterministic. The heap is not asyncio's: the virtual-time loop asks it
for its next time whenever it would sleep (``loop.EventSource``), and at that
time everything due is processed in one callback, then every socket that
received something gets one ``batch_done``.

Delivery never happens inside ``sendto``: even a zero-delay loopback packet is
queued, as a real socket would hand it over on a later wake-up.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import math
import random
import socket
from typing import TYPE_CHECKING, Any

from wgrelay.sim.link import IPV4_UDP_OVERHEAD_BYTES, IPV6_UDP_OVERHEAD_BYTES, LOST, Pipe
from wgrelay.sim.nat import DROP_NO_HAIRPIN, DROP_UDP_BLOCKED, Endpoint
from wgrelay.sim.topology import Host, Nat, Realm
from wgrelay.sim.trace import DELIVER, DELIVERED, DROP, HEAL, PARTITION, SEND, Trace
from wgrelay.transport.base import Addr

if TYPE_CHECKING:
    from wgrelay.sim.loop import VirtualTimeLoop
    from wgrelay.sim.socket import SimUdpTransport

log = logging.getLogger(__name__)

INTERNET_IPV4_POOL = ipaddress.IPv4Network("198.18.0.0/15")
"""RFC 2544's benchmarking range: public-looking, never routed for real."""

# Drop reasons of the network itself (NAT reasons live in nat.py).
DROP_LOSS = "loss"
DROP_QUEUE_FULL = "queue_full"
DROP_NO_ROUTE = "no_route"
DROP_HOST_DOWN = "host_down"
DROP_PARTITION = "partition"
DROP_PORT_UNREACHABLE = "port_unreachable"

_MAX_KEPT_RECEIVER_ERRORS = 100

(_UPLINK, _ROUTE, _NAT_OUT, _WAN_UP, _WAN_DOWN, _NAT_IN, _HAIRPIN, _DOWNLINK, _DELIVER) = range(9)


class _Flight:
    """One copy of one datagram on its way."""

    __slots__ = ("at", "data", "dst", "origin", "src", "stage", "t", "v6", "wire")

    def __init__(
        self, data: bytes, src: Endpoint, dst: Endpoint, origin: Host, t: float, v6: bool
    ) -> None:
        self.data = data
        self.src = src
        self.dst = dst
        self.origin = origin
        self.t = t
        self.v6 = v6
        self.wire = len(data) + (IPV6_UDP_OVERHEAD_BYTES if v6 else IPV4_UDP_OVERHEAD_BYTES)
        self.stage = _UPLINK
        # Host, Realm or Nat depending on the stage; Any spares the per-hop
        # isinstance checks a union would need.
        self.at: Any = origin

    def copy(self) -> _Flight:
        twin = _Flight(self.data, self.src, self.dst, self.origin, self.t, self.v6)
        twin.stage = self.stage
        twin.at = self.at
        return twin


class Partition:
    """Drops everything between two groups of hosts until healed."""

    __slots__ = ("_network", "a", "b")

    def __init__(self, network: Network, a: frozenset[Host], b: frozenset[Host]) -> None:
        self._network = network
        self.a = a
        self.b = b

    @property
    def active(self) -> bool:
        return self in self._network.partitions

    def heal(self) -> None:
        self._network.heal(self)


class Network:
    """The packet engine: flights, the event heap, counters and the trace."""

    def __init__(self, loop: VirtualTimeLoop, seed: int, trace: bool) -> None:
        self.loop = loop
        self.seed = seed
        self.trace = Trace(trace)
        self.internet = Realm("internet", None, INTERNET_IPV4_POOL)
        self.sent = 0
        self.delivered = 0
        self.events = 0
        """Queued flight steps processed (the simulator's unit of work)."""
        self.drops: dict[str, int] = {}
        self.receiver_errors: list[BaseException] = []
        self.partitions: list[Partition] = []
        self.route_delays: dict[tuple[Host, Host], float] = {}
        """Extra one-way delay between two hosts, beyond their access links
        (``Simulation.set_route_delay``): the internet's routes, which access
        links alone cannot draw (with them every path obeys the triangle
        inequality, and two relays joined by a fast route never beat one)."""
        self._heap: list[tuple[float, int, _Flight]] = []
        self._seq = itertools.count()
        self._touched: list[SimUdpTransport] = []
        self._canonical: dict[str, tuple[str, bool] | None] = {}
        loop.attach_event_source(self)

    def derive_rng(self, label: str) -> random.Random:
        """An independent, reproducible random stream for one component."""
        # Seeding with a str hashes it with SHA-512: stable across processes.
        return random.Random(f"{self.seed}/{label}")  # noqa: S311 (simulation, not security)

    # ------------------------------------------------------------ partitions

    def partition(self, a: frozenset[Host], b: frozenset[Host]) -> Partition:
        p = Partition(self, a, b)
        self.partitions.append(p)
        names = f"{sorted(h.name for h in a)}|{sorted(h.name for h in b)}"
        self.trace.event(self.loop.time(), PARTITION, names)
        return p

    def heal(self, p: Partition | None = None) -> None:
        """Heal one partition, or all of them."""
        healed = list(self.partitions) if p is None else [p] if p in self.partitions else []
        for q in healed:
            self.partitions.remove(q)
            names = f"{sorted(h.name for h in q.a)}|{sorted(h.name for h in q.b)}"
            self.trace.event(self.loop.time(), HEAL, names)

    def _partitioned(self, x: Host, y: Host) -> bool:
        return any((x in p.a and y in p.b) or (x in p.b and y in p.a) for p in self.partitions)

    # ------------------------------------------------------------ sending

    def send(self, sock: SimUdpTransport, data: bytes | memoryview, addr: Addr) -> bool:
        """``sendto`` of a simulated socket: False if it cannot leave the host."""
        host = sock.host
        v6 = sock.family == socket.AF_INET6
        try:
            ip, port = addr[0], addr[1]
        except (TypeError, IndexError):
            sock.send_errors += 1
            return False
        dst_ip = self._canonical_ip(ip, v6)
        if dst_ip is None or type(port) is not int or not 0 < port <= 0xFFFF:
            sock.send_errors += 1
            return False
        if type(data) is not bytes:
            data = bytes(data)
        now = self.loop.time()
        if host.is_local(dst_ip):
            src_ip = dst_ip if sock.wildcard else sock.bound_ip
            local = True
        elif not sock.wildcard:
            src_ip = sock.bound_ip
            local = False
            if sock.loopback:
                sock.send_errors += 1  # bound to loopback: no route out
                return False
        else:
            own = host.ipv6_addresses if v6 else host.addresses
            if not own:
                sock.send_errors += 1  # no address of this family
                return False
            src_ip = own[0]
            local = False
        f = _Flight(data, (src_ip, sock.port), (dst_ip, port), host, now, v6)
        self.sent += 1
        if self.trace.enabled:
            self.trace.raw.append((now, SEND, f.src, f.dst, len(data), "", host.name))
        if local:
            f.stage = _DELIVER
            self._push(f)
        else:
            self._advance(f, now, True)
        return True

    def _canonical_ip(self, ip: object, v6: bool) -> str | None:
        if type(ip) is not str:
            return None
        if ip in self._canonical:
            known = self._canonical[ip]
        else:
            try:
                parsed = ipaddress.ip_address(ip)
                known = (str(parsed), parsed.version == 6)
            except ValueError:
                known = None
            self._canonical[ip] = known
        if known is None or known[1] != v6:
            return None
        return known[0]

    # ------------------------------------------------------------ the state machine

    def _advance(self, f: _Flight, now: float, in_send: bool) -> None:
        while True:
            stage = f.stage
            if stage == _UPLINK:
                host = f.at
                if not self._cross(f, host.up_pipe, now, _ROUTE, host.realm):
                    return
            elif stage == _ROUTE:
                realm = f.at
                target = realm.table.get(f.dst[0])
                if target is not None:
                    if type(target) is Host:
                        f.stage = _DOWNLINK
                        if self.route_delays:
                            # once, here: a flight waiting for a pipe with a
                            # bandwidth re-enters _DOWNLINK, and adding it
                            # there again at each wake-up postponed it forever
                            f.t += self.route_delays.get((f.origin, target), 0.0)
                    else:
                        f.stage = _WAN_DOWN
                    f.at = target
                    continue
                nat = realm.nat
                if nat is None:
                    self._drop(f, DROP_NO_ROUTE, realm.name)
                    return
                f.stage = _HAIRPIN if f.dst[0] == nat.public_ip else _NAT_OUT
                f.at = nat
            elif stage == _DOWNLINK:
                host = f.at
                if not self._cross(f, host.down_pipe, now, _DELIVER, host):
                    return
            elif stage == _DELIVER:
                if in_send or f.t > now:
                    self._push(f)
                else:
                    self._deliver(f, now)
                return
            elif stage == _WAN_UP:
                nat = f.at
                if not self._cross(f, nat.up_pipe, now, _ROUTE, nat.outer):
                    return
            elif stage == _WAN_DOWN:
                nat = f.at
                if not self._cross(f, nat.down_pipe, now, _NAT_IN, nat):
                    return
            else:  # _NAT_OUT, _NAT_IN, _HAIRPIN: decided at the exact arrival time
                if f.t > now:
                    self._push(f)
                    return
                nat = f.at
                reason = self._translate(f, nat, stage, now)
                if reason is not None:
                    self._drop(f, reason, nat.name)
                    return

    def _translate(self, f: _Flight, nat: Nat, stage: int, now: float) -> str | None:
        table = nat.table
        if stage == _HAIRPIN and not nat.behavior.hairpinning:
            return DROP_NO_HAIRPIN
        if stage != _NAT_IN:  # out, or the first half of a hairpin
            if f.v6:
                if nat.behavior.udp_blocked:
                    return DROP_UDP_BLOCKED
            else:
                port = table.outbound(f.src, f.dst, now)
                if isinstance(port, str):
                    return port
                f.src = (nat.public_ip, port)
            if stage == _NAT_OUT:
                f.stage = _WAN_UP
                return None
        if not f.v6:
            inside = table.inbound(f.dst[1], f.src, now)
            if isinstance(inside, str):
                return inside
            f.dst = inside
        f.stage = _ROUTE
        f.at = nat.inner
        return None

    def _cross(
        self, f: _Flight, pipe: Pipe, now: float, next_stage: int, next_at: Host | Nat | Realm
    ) -> bool:
        """Send ``f`` through ``pipe``; False if it was dropped or has to wait."""
        if pipe.bandwidth_bps is not None and f.t > now:
            self._push(f)  # the queue must see packets in arrival order
            return False
        t = pipe.transit(f.t, f.wire)
        if t < 0.0:
            self._drop(f, DROP_LOSS if t == LOST else DROP_QUEUE_FULL, pipe.name)
            return False
        f.t = t
        f.stage = next_stage
        f.at = next_at
        if pipe.duplicate and pipe.duplicates():
            self._push(f.copy())
        return True

    def _drop(self, f: _Flight, reason: str, where: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        if self.trace.enabled:
            self.trace.raw.append((f.t, DROP, f.src, f.dst, len(f.data), reason, where))

    def _deliver(self, f: _Flight, now: float) -> None:
        host = f.at
        if not host.is_up:
            self._drop(f, DROP_HOST_DOWN, host.name)
            return
        if self.partitions and self._partitioned(f.origin, host):
            self._drop(f, DROP_PARTITION, host.name)
            return
        dst = f.dst
        sock = host.sockets.get(dst)
        if sock is None:
            sock = host.sockets.get(("::" if f.v6 else "0.0.0.0", dst[1]))
            if sock is None:
                self._drop(f, DROP_PORT_UNREACHABLE, host.name)
                return
        src: Addr = (f.src[0], f.src[1], 0, 0) if f.v6 else f.src
        self.delivered += 1
        if self.trace.enabled:
            self.trace.raw.append((now, DELIVER, src, dst, len(f.data), DELIVERED, host.name))
        try:
            sock.receiver.datagram_received(f.data, src)
        except Exception as e:  # the seam says receivers never raise: record the bug
            self._receiver_failed(sock, e)
        if not sock.batch_pending:
            sock.batch_pending = True
            self._touched.append(sock)

    def _receiver_failed(self, sock: SimUdpTransport, error: Exception) -> None:
        sock.receiver_errors += 1
        if len(self.receiver_errors) < _MAX_KEPT_RECEIVER_ERRORS:
            self.receiver_errors.append(error)
        if len(self.receiver_errors) <= 3:
            log.error("receiver of %r raised", sock, exc_info=error)

    # ------------------------------------------------------------ the event queue

    def _push(self, f: _Flight) -> None:
        heapq.heappush(self._heap, (f.t, next(self._seq), f))

    def next_event_time(self) -> float:
        heap = self._heap
        return heap[0][0] if heap else math.inf

    def run_due_events(self) -> None:
        """Everything due now, then one ``batch_done`` per socket that received."""
        now = self.loop.time()
        heap = self._heap
        pop = heapq.heappop
        advance = self._advance
        while heap and heap[0][0] <= now:
            while heap and heap[0][0] <= now:
                self.events += 1
                advance(pop(heap)[2], now, False)
            if self._touched:
                self._flush_batches()

    def _flush_batches(self) -> None:
        touched, self._touched = self._touched, []
        for sock in touched:
            sock.batch_pending = False
            if sock.closed:
                continue
            try:
                sock.receiver.batch_done()
            except Exception as e:
                self._receiver_failed(sock, e)
