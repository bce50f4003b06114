"""The pieces of a simulated network: address realms, hosts and NAT boxes.

A *realm* is one address space: the public internet, or the private LAN behind
one NAT box. It maps each address in it to what answers for it there: a host,
or a NAT box (its outside address, or a host's IPv6 address routed through
it). A host sits in exactly one realm with its access link; a NAT box sits in
its outside realm with its WAN link and owns its LAN realm, which may hold
further NAT boxes (carrier-grade NAT falls out of that).

IPv6 is routed, never translated or filtered: a host's IPv6 address is known
in every realm above it and packets to it cross the NAT boxes on the way as
plain routers (but a ``udp_blocked`` box still drops them).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from wgrelay.sim.link import LinkSpec, Pipe
from wgrelay.sim.nat import Endpoint, NatBehavior, NatTable
from wgrelay.sim.socket import SimRuntime, SimUdpTransport
from wgrelay.sim.trace import HOST_DOWN, HOST_UP, NAT_EXPIRE, NAT_MAP
from wgrelay.transport.base import DatagramReceiver

if TYPE_CHECKING:
    from wgrelay.sim.engine import Network
    from wgrelay.sim.stream import SimStreamListener, StreamNet

EPHEMERAL_PORTS = (32768, 60999)
"""Linux's default ``ip_local_port_range``."""
_LOOPBACK_V4 = "127.0.0.1"
_LOOPBACK_V6 = "::1"


class Realm:
    """One address space and what answers for each address in it."""

    __slots__ = ("_next", "_pool", "name", "nat", "table")

    def __init__(self, name: str, nat: Nat | None, pool: ipaddress.IPv4Network) -> None:
        self.name = name
        self.nat = nat
        """The box whose LAN this is; None for the internet."""
        self.table: dict[str, Host | Nat] = {}
        self._pool = pool
        self._next = 1 if nat is None else 2  # .1 is the NAT box's inside address

    def allocate(self) -> str:
        """The next free IPv4 address of the pool (skipping .0 and .255)."""
        while True:
            offset = self._next
            self._next += 1
            if offset >= self._pool.num_addresses - 1:
                raise ValueError(f"address pool {self._pool} of {self.name} is exhausted")
            if offset % 256 in (0, 255):
                continue
            ip = str(self._pool.network_address + offset)
            if ip not in self.table:
                return ip

    def attach(self, ip: str, what: Host | Nat) -> None:
        if ip in self.table:
            raise ValueError(f"{ip} is already in use in {self.name}")
        self.table[ip] = what


class Host:
    """A machine with addresses, one access link and UDP sockets."""

    def __init__(
        self,
        network: Network,
        name: str,
        realm: Realm,
        ipv4: list[str],
        ipv6: list[str],
        link: LinkSpec,
        streams: StreamNet,
    ) -> None:
        self.network = network
        self.streams = streams
        """The simulation's TCP/TLS connections (``wgrelay.sim.stream``)."""
        self.name = name
        self.realm = realm
        self.addresses: tuple[str, ...] = tuple(ipv4)
        self.ipv6_addresses: tuple[str, ...] = tuple(ipv6)
        self.nat: Nat | None = realm.nat
        """The NAT box this host sits behind (None: on the internet)."""
        self.up_pipe = Pipe(f"{name}.up", link, network.derive_rng(f"link/{name}/up"))
        self.down_pipe = Pipe(f"{name}.down", link, network.derive_rng(f"link/{name}/down"))
        self.is_up = True
        self.sockets: dict[Endpoint, SimUdpTransport] = {}
        self._local = frozenset((*ipv4, *ipv6, _LOOPBACK_V4, _LOOPBACK_V6))
        self._ports_v4: dict[int, list[str]] = {}
        self._ports_v6: dict[int, list[str]] = {}
        self._next_ephemeral: dict[int, int] = dict.fromkeys(
            (int(socket.AF_INET), int(socket.AF_INET6)), EPHEMERAL_PORTS[0]
        )
        # TCP has its own port space: (v6, port) -> the addresses bound to it
        self._tcp_ports: dict[tuple[bool, int], list[str]] = {}
        self._next_tcp_ephemeral = dict.fromkeys((False, True), EPHEMERAL_PORTS[0])
        self.stream_listeners: dict[tuple[bool, str, int], SimStreamListener] = {}
        self._runtime: SimRuntime | None = None
        self._power_hooks: list[tuple[Callable[[], None], Callable[[], None]]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"

    @property
    def address(self) -> str:
        """The primary address: first IPv4, else first IPv6."""
        return (self.addresses or self.ipv6_addresses)[0]

    @property
    def link(self) -> LinkSpec:
        return self.up_pipe.spec

    def set_link(self, spec: LinkSpec) -> None:
        """Change the access link's behaviour from now on (both directions)."""
        self.up_pipe.set_spec(spec)
        self.down_pipe.set_spec(spec)

    def runtime(self) -> SimRuntime:
        """The ``Runtime`` production shells on this host are given."""
        if self._runtime is None:
            self._runtime = SimRuntime(self, self.network.loop)
        return self._runtime

    def is_local(self, ip: str) -> bool:
        return ip in self._local or ip.startswith("127.")

    # ------------------------------------------------------------ power

    def crash(self) -> None:
        """Power off: every socket vanishes and packets to the host are dropped."""
        if not self.is_up:
            return
        self.is_up = False
        for sock in list(self.sockets.values()):
            sock.close()
        self.streams.host_crashed(self)
        for on_crash, _ in self._power_hooks:
            on_crash()
        self.network.trace.event(self.network.loop.time(), HOST_DOWN, self.name)

    def restore(self) -> None:
        """Power on again; services registered with ``on_power`` start again."""
        if self.is_up:
            return
        self.is_up = True
        self.network.trace.event(self.network.loop.time(), HOST_UP, self.name)
        for _, on_restore in self._power_hooks:
            on_restore()

    def on_power(self, on_crash: Callable[[], None], on_restore: Callable[[], None]) -> None:
        """Register a service to stop on ``crash()`` and start on ``restore()``."""
        self._power_hooks.append((on_crash, on_restore))

    # ------------------------------------------------------------ sockets

    def bind(self, ip: str, port: int, receiver: DatagramReceiver) -> SimUdpTransport:
        """Bind a UDP socket like ``socket.bind`` would (``OSError`` on failure)."""
        if not self.is_up:
            raise OSError(errno.ENETDOWN, f"host {self.name} is down")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise OSError(errno.EINVAL, f"not an IP address: {ip!r}") from None
        ip = str(addr)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        wildcard = addr.is_unspecified
        if not wildcard and not self.is_local(ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{ip} is not an address of {self.name}")
        if not 0 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        ports = self._ports_v6 if family == socket.AF_INET6 else self._ports_v4
        if port == 0:
            port = self._ephemeral(family, ports)
        bound = ports.get(port, [])
        if bound and (wildcard or ip in bound or any(b in ("0.0.0.0", "::") for b in bound)):
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = SimUdpTransport(self, family, ip, port, receiver)
        ports.setdefault(port, []).append(ip)
        self.sockets[(ip, port)] = sock
        return sock

    def unbind(self, sock: SimUdpTransport) -> None:
        if self.sockets.get((sock.bound_ip, sock.port)) is sock:
            del self.sockets[(sock.bound_ip, sock.port)]
            ports = self._ports_v6 if sock.family == socket.AF_INET6 else self._ports_v4
            bound = ports[sock.port]
            bound.remove(sock.bound_ip)
            if not bound:
                del ports[sock.port]

    # ------------------------------------------------------------ TCP ports

    def claim_tcp_port(self, v6: bool, ip: str, port: int) -> bool:
        """Take ``port`` for ``ip`` (a wildcard takes it for every address);
        False if it is in use, as ``bind`` would say."""
        bound = self._tcp_ports.get((v6, port), [])
        if bound and (
            ip in ("0.0.0.0", "::") or ip in bound or "0.0.0.0" in bound or "::" in bound
        ):
            return False
        self._tcp_ports.setdefault((v6, port), []).append(ip)
        return True

    def allocate_tcp_port(self, v6: bool, ip: str) -> int:
        """A free ephemeral TCP port, taken for ``ip``."""
        lo, hi = EPHEMERAL_PORTS
        port = self._next_tcp_ephemeral[v6]
        for _ in range(hi - lo + 1):
            candidate = port
            port = lo if port >= hi else port + 1
            if (v6, candidate) not in self._tcp_ports:
                self._next_tcp_ephemeral[v6] = port
                self._tcp_ports[(v6, candidate)] = [ip]
                return candidate
        raise OSError(errno.EADDRINUSE, f"no free ephemeral TCP port on {self.name}")

    def release_tcp_port(self, v6: bool, ip: str, port: int) -> None:
        bound = self._tcp_ports.get((v6, port))
        if bound is not None and ip in bound:
            bound.remove(ip)
            if not bound:
                del self._tcp_ports[(v6, port)]

    def add_stream_listener(self, listener: SimStreamListener) -> None:
        self.stream_listeners[(listener.v6, listener.ip, listener.port)] = listener

    def remove_stream_listener(self, listener: SimStreamListener) -> None:
        key = (listener.v6, listener.ip, listener.port)
        if self.stream_listeners.get(key) is listener:
            del self.stream_listeners[key]
            self.release_tcp_port(listener.v6, listener.ip, listener.port)

    def find_stream_listener(self, v6: bool, dst: Endpoint) -> SimStreamListener | None:
        """Who accepts a connection to ``dst`` here: a listener on that
        address, else one on the wildcard."""
        found = self.stream_listeners.get((v6, dst[0], dst[1]))
        if found is None:
            found = self.stream_listeners.get((v6, "::" if v6 else "0.0.0.0", dst[1]))
        return found

    def _ephemeral(self, family: int, ports: dict[int, list[str]]) -> int:
        lo, hi = EPHEMERAL_PORTS
        port = self._next_ephemeral[family]
        for _ in range(hi - lo + 1):
            candidate = port
            port = lo if port >= hi else port + 1
            if candidate not in ports:
                self._next_ephemeral[family] = port
                return candidate
        raise OSError(errno.EADDRINUSE, f"no free ephemeral port on {self.name}")


class Nat:
    """A NAT box: a public address in its outside realm, a LAN behind it."""

    def __init__(
        self,
        network: Network,
        name: str,
        behavior: NatBehavior,
        outer: Realm,
        public_ip: str,
        lan: ipaddress.IPv4Network,
        link: LinkSpec,
    ) -> None:
        self.network = network
        self.name = name
        self.behavior = behavior
        self.outer = outer
        self.public_ip = public_ip
        self.lan = lan
        self.inner = Realm(f"{name}.lan", self, lan)
        self.up_pipe = Pipe(f"{name}.wan.up", link, network.derive_rng(f"link/{name}/up"))
        self.down_pipe = Pipe(f"{name}.wan.down", link, network.derive_rng(f"link/{name}/down"))
        self.table = NatTable(
            behavior, public_ip, network.derive_rng(f"nat/{name}"), self._on_table_event
        )
        # TCP mappings: one port per connection, held while it is open
        # (RFC 5382 REQ-5: an established mapping lasts hours, longer than any
        # simulated connection idles), from their own table and RNG.
        self._tcp_ports: set[int] = set()
        self._tcp_rng = network.derive_rng(f"nat/{name}/tcp")

    def __repr__(self) -> str:
        return f"<Nat {self.name} {self.public_ip}>"

    @property
    def link(self) -> LinkSpec:
        return self.up_pipe.spec

    def set_link(self, spec: LinkSpec) -> None:
        """Change the WAN link's behaviour from now on (both directions)."""
        self.up_pipe.set_spec(spec)
        self.down_pipe.set_spec(spec)

    def reset(self) -> None:
        """Forget every mapping, as a reboot of the box would."""
        self.table.reset()

    def reconfigure(self, behavior: NatBehavior) -> None:
        """Give the box new settings (say, an operator turning on
        endpoint-independent mapping); like a reboot, it forgets every mapping."""
        self.behavior = behavior
        self.table = NatTable(
            behavior,
            self.public_ip,
            self.network.derive_rng(f"nat/{self.name}/{behavior}"),
            self._on_table_event,
        )

    def allocate_tcp_port(self, inside_port: int) -> int | None:
        """The public port of a new TCP connection from ``inside_port`` (the
        same one with port preservation, when free); None when all are taken."""
        lo, hi = self.behavior.port_range
        used = self._tcp_ports
        port: int | None = None
        if self.behavior.port_preservation and lo <= inside_port <= hi and inside_port not in used:
            port = inside_port
        else:
            for _ in range(64):
                candidate = self._tcp_rng.randint(lo, hi)
                if candidate not in used:
                    port = candidate
                    break
            else:
                port = next((p for p in range(lo, hi + 1) if p not in used), None)
        if port is not None:
            used.add(port)
        return port

    def release_tcp_port(self, port: int) -> None:
        self._tcp_ports.discard(port)

    def mapping_of(self, inside: Endpoint, remote: Endpoint) -> Endpoint | None:
        """The external endpoint ``inside`` currently uses towards ``remote``."""
        return self.table.mapping_of(inside, remote, self.network.loop.time())

    def _on_table_event(self, kind: str, inside: Endpoint, outside: Endpoint) -> None:
        trace = self.network.trace
        if trace.enabled:
            kind = NAT_MAP if kind == "nat_map" else NAT_EXPIRE
            trace.raw.append((self.network.loop.time(), kind, inside, outside, 0, "", self.name))
