"""NAT behaviour per RFC 4787, as a pure table driven by ``now``.

Theory of operation
-------------------
A NAT box has one public address and a table of *mappings*. An outbound packet
from inside endpoint ``(ip, port)`` to remote ``R`` is given an external port:

* mapping (RFC 4787 section 4.1): the mapping is reused for every packet whose
  *mapping key* matches. Endpoint-independent: the key is the inside endpoint,
  so every remote sees the same external port. Address-dependent: inside
  endpoint + remote IP. Address-and-port-dependent ("symmetric"): inside
  endpoint + remote IP and port, so every remote sees a different port.
* port preservation: a new mapping takes the inside port when it is free;
  otherwise (or with preservation off) a port drawn from the seeded RNG.
* filtering (section 5): an inbound packet to an external port is let in if a
  mapping holds that port and, for address-dependent filtering, the inside
  endpoint has sent to the packet's source IP through that mapping, or for
  address-and-port-dependent filtering to its source IP and port. Each such
  permission lives as long as a mapping would (the timeout after the last
  outbound packet to that remote).
* timeout (section 4.3): a mapping dies ``mapping_timeout_s`` after its last
  outbound packet. Outbound packets always refresh it (REQ-6); inbound packets
  refresh it only with ``inbound_refresh`` (off by default, like most home
  routers and as RFC 4787 permits). A dead mapping is gone for good: the next
  outbound packet makes a new one, which without port preservation has a new
  port (a "NAT rebinding" as a roaming peer sees it).
* hairpinning (section 6): a packet from inside to the box's own public address
  is translated out and back in (source: the sender's external mapping), if
  ``hairpinning`` is on; the topology code does the routing, this table only
  translates.
* ``udp_blocked``: the box drops every outbound UDP packet (a restrictive
  firewall), so nothing ever gets a mapping. TCP still passes (the simulated
  streams of ``wgrelay.sim.stream`` take their own route through the box)
  unless ``tcp_blocked``, or ``tcp_443_only`` and the destination port is
  not 443 (a network that lets only HTTPS out). ``udp_only_to`` lets UDP
  out to the listed addresses only (a network that reaches one relay).

Expired mappings are removed when touched, and swept every few thousand new
mappings so a long run does not grow without bound.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

Endpoint = tuple[str, int]

NAT_MAPPING_TIMEOUT_S = 120.0
"""RFC 4787 REQ-5: at least two minutes (unless for well-known ports)."""
_SWEEP_EVERY_MAPPINGS = 4096
_RANDOM_PORT_TRIES = 64

# Drop reasons (counted and traced by the network).
DROP_UDP_BLOCKED = "nat_udp_blocked"
DROP_UDP_DESTINATION = "nat_udp_destination"
DROP_PORTS_EXHAUSTED = "nat_ports_exhausted"
DROP_NO_MAPPING = "nat_no_mapping"
DROP_FILTERED = "nat_filtered"
DROP_NO_HAIRPIN = "nat_no_hairpin"


class Dependence(enum.Enum):
    """How much of the remote endpoint a mapping or filter depends on (RFC 4787)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True, slots=True)
class NatBehavior:
    mapping: Dependence = Dependence.ENDPOINT_INDEPENDENT
    filtering: Dependence = Dependence.ADDRESS_AND_PORT_DEPENDENT
    port_preservation: bool = True
    mapping_timeout_s: float = NAT_MAPPING_TIMEOUT_S
    inbound_refresh: bool = False
    hairpinning: bool = True
    udp_blocked: bool = False
    tcp_blocked: bool = False
    """Outbound TCP connections are dropped (they time out)."""
    tcp_443_only: bool = False
    """Outbound TCP connections pass only to port 443."""
    udp_only_to: frozenset[str] | None = None
    """Outbound UDP passes only to these addresses (a firewall that lets
    UDP out to one relay only); None: to anyone."""
    port_range: tuple[int, int] = (1024, 65535)

    def __post_init__(self) -> None:
        lo, hi = self.port_range
        if not 1 <= lo <= hi <= 0xFFFF:
            raise ValueError(f"bad NAT port range {self.port_range}")
        if self.mapping_timeout_s <= 0:
            raise ValueError("NAT mapping_timeout_s must be positive")


_EIM = Dependence.ENDPOINT_INDEPENDENT
_ADM = Dependence.ADDRESS_DEPENDENT
_APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT


class NatKind(enum.Enum):
    """The classic (RFC 3489) names, as presets of ``NatBehavior``.

    ``NONE`` means no NAT at all: a host given it sits on the internet.
    """

    NONE = "none"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"
    TCP_443_ONLY = "tcp-443-only"
    """UDP blocked and TCP only to port 443: a network that lets only HTTPS out."""

    @property
    def behavior(self) -> NatBehavior | None:
        return NAT_PRESETS.get(self)


NAT_PRESETS: dict[NatKind, NatBehavior] = {
    NatKind.FULL_CONE: NatBehavior(mapping=_EIM, filtering=_EIM),
    NatKind.RESTRICTED_CONE: NatBehavior(mapping=_EIM, filtering=_ADM),
    # No port preservation: a peer behind it is not reachable at its configured
    # WireGuard port, only at whatever port the box picked (hole punching
    # needs the port learnt from a third party).
    NatKind.PORT_RESTRICTED_CONE: NatBehavior(
        mapping=_EIM, filtering=_APDM, port_preservation=False
    ),
    NatKind.SYMMETRIC: NatBehavior(mapping=_APDM, filtering=_APDM, port_preservation=False),
    NatKind.UDP_BLOCKED: NatBehavior(udp_blocked=True),
    NatKind.TCP_443_ONLY: NatBehavior(udp_blocked=True, tcp_443_only=True),
}

NatEventHook = Callable[[str, Endpoint, Endpoint], None]
"""Called as ``hook(kind, inside, outside)`` with kind ``nat_map``/``nat_expire``."""


class _Mapping:
    __slots__ = ("external_port", "inside", "key", "last_active", "permits")

    def __init__(self, key: object, inside: Endpoint, external_port: int, now: float) -> None:
        self.key = key
        self.inside = inside
        self.external_port = external_port
        self.last_active = now
        self.permits: dict[object, float] = {}
        """Filter key (remote IP, or remote endpoint) -> last outbound packet to it."""


class NatTable:
    """The translation state of one NAT box with one public address."""

    def __init__(
        self,
        behavior: NatBehavior,
        public_ip: str,
        rng: random.Random,
        on_event: NatEventHook | None = None,
    ) -> None:
        self.behavior = behavior
        self.public_ip = public_ip
        self._rng = rng
        self._on_event = on_event
        self._timeout_s = behavior.mapping_timeout_s
        self._by_key: dict[object, _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        self._created = 0

    def __len__(self) -> int:
        return len(self._by_port)

    # ------------------------------------------------------------ translation

    def outbound(self, inside: Endpoint, remote: Endpoint, now: float) -> int | str:
        """The external port for this packet, or a drop reason."""
        b = self.behavior
        if b.udp_blocked:
            return DROP_UDP_BLOCKED
        if b.udp_only_to is not None and remote[0] not in b.udp_only_to:
            return DROP_UDP_DESTINATION
        key = self._mapping_key(inside, remote)
        m = self._by_key.get(key)
        if m is not None and m.last_active + self._timeout_s <= now:
            self._expire(m)
            m = None
        if m is None:
            port = self._allocate(inside[1], now)
            if port is None:
                return DROP_PORTS_EXHAUSTED
            m = _Mapping(key, inside, port, now)
            self._by_key[key] = m
            self._by_port[port] = m
            if self._on_event is not None:
                self._on_event("nat_map", inside, (self.public_ip, port))
            self._created += 1
            if self._created % _SWEEP_EVERY_MAPPINGS == 0:
                self.sweep(now)
        m.last_active = now
        if b.filtering is _ADM:
            m.permits[remote[0]] = now
        elif b.filtering is _APDM:
            m.permits[remote] = now
        return m.external_port

    def inbound(self, external_port: int, remote: Endpoint, now: float) -> Endpoint | str:
        """The inside endpoint this packet goes to, or a drop reason."""
        m = self._by_port.get(external_port)
        if m is None:
            return DROP_NO_MAPPING
        timeout = self._timeout_s
        if m.last_active + timeout <= now:
            self._expire(m)
            return DROP_NO_MAPPING
        b = self.behavior
        if b.filtering is not _EIM:
            permit_key: object = remote[0] if b.filtering is _ADM else remote
            sent = m.permits.get(permit_key)
            if sent is None or sent + timeout <= now:
                return DROP_FILTERED
            if b.inbound_refresh:
                m.permits[permit_key] = now
        if b.inbound_refresh:
            m.last_active = now
        return m.inside

    def mapping_of(self, inside: Endpoint, remote: Endpoint, now: float) -> Endpoint | None:
        """The live external endpoint ``inside`` would use towards ``remote``
        (what a STUN server at ``remote`` would report), without creating one."""
        m = self._by_key.get(self._mapping_key(inside, remote))
        if m is None or m.last_active + self._timeout_s <= now:
            return None
        return (self.public_ip, m.external_port)

    def reset(self) -> None:
        """Forget every mapping (a reboot of the box)."""
        self._by_key.clear()
        self._by_port.clear()

    def sweep(self, now: float) -> None:
        """Drop every expired mapping."""
        timeout = self._timeout_s
        for m in [m for m in self._by_port.values() if m.last_active + timeout <= now]:
            self._expire(m)

    # ------------------------------------------------------------ internals

    def _mapping_key(self, inside: Endpoint, remote: Endpoint) -> object:
        mapping = self.behavior.mapping
        if mapping is _EIM:
            return inside
        if mapping is _ADM:
            return (inside, remote[0])
        return (inside, remote)

    def _expire(self, m: _Mapping) -> None:
        if self._by_key.get(m.key) is m:
            del self._by_key[m.key]
        if self._by_port.get(m.external_port) is m:
            del self._by_port[m.external_port]
        if self._on_event is not None:
            self._on_event("nat_expire", m.inside, (self.public_ip, m.external_port))

    def _port_free(self, port: int, now: float) -> bool:
        m = self._by_port.get(port)
        if m is None:
            return True
        if m.last_active + self._timeout_s <= now:
            self._expire(m)
            return True
        return False

    def _allocate(self, wanted: int, now: float) -> int | None:
        lo, hi = self.behavior.port_range
        if self.behavior.port_preservation and lo <= wanted <= hi and self._port_free(wanted, now):
            return wanted
        rng = self._rng
        for _ in range(_RANDOM_PORT_TRIES):
            port = rng.randint(lo, hi)
            if self._port_free(port, now):
                return port
        # Nearly full: a scan is slow but only happens at the edge of exhaustion.
        for port in range(lo, hi + 1):
            if self._port_free(port, now):
                return port
        return None
