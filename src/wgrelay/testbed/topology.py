"""The testbed: a simulated internet of network namespaces, NAT routers and peers.

::

                         namespace <prefix>-inet: bridge br0, 203.0.113.1/24
              +-------------------+---------------------+-------------------+
              | r-<relay>         | n-<name>            | n-<name>          |
     <prefix>-relay-<relay>   <prefix>-nat-<name>   <prefix>-nat-<name>   ...
     eth0 203.0.113.10        wan 203.0.113.20      wan 203.0.113.21
                              lan 10.1.0.1/24       lan 10.2.0.1/24
                                  |                     |
                              <prefix>-peer-<name>  <prefix>-peer-<name>
                              eth0 10.1.0.2         eth0 10.2.0.2
                              wireguard-go <prefix>-<name>, 10.99.0.1/24, ...

Every name a testbed creates -- namespaces, interfaces whose name is global
(wireguard-go control sockets), its state directory -- starts with its random
prefix (``wr`` + 4 hex digits), so two testbeds, or one and the leftovers of a
crashed one, never collide. veth ends are created directly inside their
namespaces, so their short names (``eth0``, ``wan``, ``lan``) never meet in the
root namespace.

Lifecycle: ``Testbed()`` has no side effects. ``open()`` (or entering the
``with`` block) claims a prefix, writes the owner record and builds the
internet; ``add_*`` build the rest. ``close()`` -- idempotent, and run by the
``with`` block whatever happens, including a build failing half-way -- stops
every process by PID, deletes every namespace (with its veths), removes
wireguard sockets and the state directory.

Only using a testbed needs root; importing this module does not.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from wgrelay.testbed.errors import TestbedError
from wgrelay.testbed.leftovers import (
    DEFAULT_STATE_ROOT,
    cleanup_stale_testbeds,
    remove_prefixed_resources,
    write_owner,
)
from wgrelay.testbed.nat import (
    NatKind,
    block_udp_rules,
    loss_ruleset,
    port_forward_rules,
    router_ruleset,
    unblock_rules,
)
from wgrelay.testbed.netns import BackgroundProcess, Namespace, list_namespaces
from wgrelay.testbed.wireguard import (
    MAX_IFNAME_LEN,
    WG_SOCKET_DIR,
    Endpoint,
    WireGuardInterface,
)

logger = logging.getLogger(__name__)

INTERNET = ipaddress.IPv4Network("203.0.113.0/24")
BRIDGE = "br0"
BRIDGE_ADDRESS = "203.0.113.1"
TUNNEL_NETWORK = ipaddress.IPv4Network("10.99.0.0/24")
DEFAULT_LISTEN_PORT = 51820

# Host numbers on the simulated internet: relays .10-.19, routers .20-.29 (the
# addresses readers expect), then more from higher blocks if a scenario needs them.
_RELAY_HOSTS = tuple(itertools.chain(range(10, 20), range(100, 150)))
_ROUTER_HOSTS = tuple(itertools.chain(range(20, 30), range(150, 200)))
_MAX_LANS = 98  # LANs are 10.N.0.0/24 for N = 1..98; 10.99 is the tunnel network

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_PREFIX_ATTEMPTS = 20


def _check_name(name: str) -> None:
    # Names end up in interface names (15 characters at most), see the diagram.
    if not _NAME_RE.match(name):
        raise TestbedError(
            f"node name {name!r} must be 1-8 lowercase letters or digits, starting with a letter"
        )


class Node:
    """A host of the testbed: its name and namespace, plus shortcuts."""

    def __init__(self, name: str, ns: Namespace) -> None:
        self.name = name
        self.ns = ns

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, ns={self.ns.name!r})"

    def ping(self, address: str, *, count: int = 1, timeout: float = 5.0) -> bool:
        """Whether ``count`` echo replies from ``address`` arrive within ``timeout`` s."""
        return self.ns.ping(address, count=count, timeout=timeout)

    def popen(
        self, argv: Sequence[str], *, name: str, env: Mapping[str, str] | None = None
    ) -> BackgroundProcess:
        """Start a tracked background process in this node's namespace."""
        return self.ns.popen(argv, name=name, env=env)

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets entering this node (0: no loss)."""
        self.ns.nft(loss_ruleset(percent))
        logger.info("%s: %d %% inbound loss", self.name, percent)


class Relay(Node):
    """A host with a public address on the simulated internet."""

    def __init__(self, name: str, ns: Namespace, address: str) -> None:
        super().__init__(name, ns)
        self.address = address


class Router(Node):
    """A NAT router: ``wan`` on the internet, ``lan`` towards exactly one peer."""

    WAN_IF = "wan"
    LAN_IF = "lan"

    def __init__(
        self,
        name: str,
        ns: Namespace,
        kind: NatKind,
        wan_address: str,
        lan: ipaddress.IPv4Network,
    ) -> None:
        super().__init__(name, ns)
        self.kind = kind
        self.wan_address = wan_address
        self.lan = lan
        self.lan_address = str(lan.network_address + 1)
        self.peer_address = str(lan.network_address + 2)
        self.port_forwards: list[tuple[str, int]] = []

    def open_port_forward(self, port: int, proto: str = "udp") -> None:
        """Forward ``WAN:port`` to the peer's ``port``, then flush conntrack.

        NAT rules only decide a flow's first packet; a flow conntrack already
        tracks keeps its old decision however the rules change. The router's
        input filter keeps unsolicited packets from leaving entries, but any
        entry that does exist for ``WAN:port`` (a flow the peer started, or one
        from before this rule) would shadow the forward. Flushing makes every
        flow consult the current rules.
        """
        self.ns.nft(
            port_forward_rules(
                wan_if=self.WAN_IF, port=port, to_address=self.peer_address, proto=proto
            )
        )
        self.port_forwards.append((proto, port))
        self.flush_conntrack()
        logger.info("%s: %s port %d forwarded to %s", self.name, proto, port, self.peer_address)

    def apply_nat(self, kind: NatKind, wg_port: int) -> None:
        """Load the router's whole table for ``kind`` (replacing any)."""
        self.ns.nft(
            router_ruleset(
                kind,
                wan_if=self.WAN_IF,
                lan_if=self.LAN_IF,
                lan_host=self.peer_address,
                wg_port=wg_port,
            )
        )
        self.kind = kind

    def reconfigure(self, kind: NatKind, wg_port: int) -> None:
        """Give the router another NAT kind and flush conntrack, as a reboot
        with new settings would: every mapping is new afterwards. Port
        forwards are not kept."""
        self.apply_nat(kind, wg_port)
        self.port_forwards.clear()
        self.flush_conntrack()
        logger.info("%s: now a %s NAT", self.name, kind.value)

    def block_udp(self, blocked: bool = True) -> None:
        """Drop (or stop dropping) every forwarded UDP packet: a TCP-only network."""
        self.ns.nft(block_udp_rules() if blocked else unblock_rules())
        logger.info("%s: UDP %s", self.name, "blocked" if blocked else "unblocked")

    def flush_conntrack(self) -> None:
        self.ns.run(["conntrack", "-F"])

    def conntrack_entries(self) -> str:
        """``conntrack -L`` of the router, for assertions and for debugging."""
        return self.ns.run(["conntrack", "-L"]).stdout


class Peer(Node):
    """A host behind its own NAT router, usually running a wireguard-go interface."""

    def __init__(
        self,
        name: str,
        ns: Namespace,
        router: Router,
        tunnel_address: str,
        listen_port: int,
        wg: WireGuardInterface | None,
    ) -> None:
        super().__init__(name, ns)
        self.router = router
        self.lan_address = router.peer_address
        self.tunnel_address = tunnel_address
        self.listen_port = listen_port
        self.wg = wg

    @property
    def wan_endpoint(self) -> Endpoint:
        """The router's WAN address with our listen port: where a port forward for
        our WireGuard port would be, and what a naive peer would dial."""
        return (self.router.wan_address, self.listen_port)

    def wireguard(self) -> WireGuardInterface:
        """Our interface; raises if this peer was built without one."""
        if self.wg is None:
            raise TestbedError(f"peer {self.name} has no wireguard interface")
        return self.wg

    def add_wireguard_peer(
        self, other: Peer, *, endpoint: Endpoint | None = None, keepalive_s: int | None = None
    ) -> None:
        """Configure ``other`` as a WireGuard peer of ours (one direction only)."""
        self.wireguard().add_peer(
            other.wireguard().public_key,
            allowed_ips=[f"{other.tunnel_address}/32"],
            endpoint=endpoint,
            keepalive_s=keepalive_s,
        )

    def block_udp(self, blocked: bool = True) -> None:
        """Block UDP between us and the internet (at our router)."""
        self.router.block_udp(blocked)


class Testbed:
    """A simulated internet with relays and NATed peers; see the module docstring."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        state_root: Path = DEFAULT_STATE_ROOT,
        wireguard_log_level: str = "verbose",
        clean_stale: bool = True,
    ) -> None:
        self.state_root = state_root
        self.wireguard_log_level = wireguard_log_level
        self.clean_stale = clean_stale
        self._prefix: str | None = None
        self._work_dir: Path | None = None
        self._inet: Namespace | None = None
        self._namespaces: list[Namespace] = []
        self._interfaces: list[WireGuardInterface] = []
        self.relays: dict[str, Relay] = {}
        self.routers: dict[str, Router] = {}
        self.peers: dict[str, Peer] = {}

    def __repr__(self) -> str:
        return f"Testbed(prefix={self._prefix!r})"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Testbed:
        try:
            self.open()
        except BaseException:
            try:
                self.close()
            except TestbedError:  # don't mask why open() failed
                logger.exception("testbed %s: teardown after a failed open failed too", self)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._prefix is not None:
            logger.warning("testbed %s failed; process logs:\n%s", self._prefix, self.log_tails())
        try:
            self.close()
        except TestbedError:
            if exc is None:
                raise
            # The error that got us here matters more; don't mask it.
            logger.exception("testbed %s: teardown failed too", self._prefix)

    def open(self) -> Testbed:
        """Claim a prefix and build the internet. Call ``close()`` whatever happens."""
        if self._prefix is not None:
            raise TestbedError(f"{self!r} is already open")
        if self.clean_stale:
            cleanup_stale_testbeds(self.state_root)
        self._claim_prefix()
        inet = self._new_namespace("inet")
        inet.ip("link", "add", BRIDGE, "type", "bridge")
        inet.ip("address", "add", f"{BRIDGE_ADDRESS}/{INTERNET.prefixlen}", "dev", BRIDGE)
        inet.ip("link", "set", BRIDGE, "up")
        self._inet = inet
        logger.info(
            "testbed %s: internet %s up (state in %s)", self.prefix, INTERNET, self.work_dir
        )
        return self

    def close(self) -> None:
        """Stop every process, delete every namespace and file. Idempotent.

        Each step runs even when an earlier one failed; the failures are raised
        together at the end. The state directory (with the owner record) is only
        removed once everything else is gone, so that a later
        ``cleanup_stale_testbeds`` can finish an interrupted teardown.
        """
        if self._prefix is None:
            return
        errors: list[str] = []
        # Processes first, all of them: wireguard-go must see SIGTERM to remove
        # its socket, and nothing should be talking while links disappear.
        for ns in reversed(self._namespaces):
            try:
                ns.stop_processes()
            except Exception as e:  # keep tearing down; reported below
                errors.append(f"stopping processes in {ns.name}: {e}")
        for wg in self._interfaces:
            try:
                wg.stop()
            except Exception as e:
                errors.append(f"stopping {wg.name}: {e}")
        for ns in reversed(self._namespaces):
            try:
                ns.delete()
            except Exception as e:
                errors.append(f"deleting namespace {ns.name}: {e}")
        try:
            # Catches interfaces named by interface_name() that others started.
            remove_prefixed_resources(self._prefix)
        except Exception as e:
            errors.append(f"removing leftovers of {self._prefix}: {e}")
        if errors:
            raise TestbedError(f"testbed {self._prefix}: teardown incomplete: " + "; ".join(errors))
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        logger.info("testbed %s: torn down", self._prefix)
        self._namespaces.clear()
        self._interfaces.clear()
        self.relays.clear()
        self.routers.clear()
        self.peers.clear()
        self._prefix = None
        self._work_dir = None
        self._inet = None

    # ------------------------------------------------------------ names

    @property
    def prefix(self) -> str:
        if self._prefix is None:
            raise TestbedError("the testbed is not open")
        return self._prefix

    @property
    def work_dir(self) -> Path:
        """This testbed's own directory: owner record, keys/ and logs/."""
        if self._work_dir is None:
            raise TestbedError("the testbed is not open")
        return self._work_dir

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def key_dir(self) -> Path:
        return self.work_dir / "keys"

    @property
    def inet(self) -> Namespace:
        """The namespace holding the internet's bridge (it has 203.0.113.1)."""
        if self._inet is None:
            raise TestbedError("the testbed is not open")
        return self._inet

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return tuple(self._namespaces)

    def namespace_name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def interface_name(self, tag: str) -> str:
        """A machine-wide unique interface name (``<prefix>-<tag>``, <= 15 chars).

        For interfaces whose name must be unique beyond their namespace, like
        wireguard-go's; teardown removes sockets of any name made here.
        """
        name = f"{self.prefix}-{tag}"
        if len(name) > MAX_IFNAME_LEN or not re.match(r"^[a-z0-9]+$", tag):
            raise TestbedError(
                f"interface tag {tag!r} must be lowercase letters/digits, "
                f"at most {MAX_IFNAME_LEN - len(self.prefix) - 1} characters"
            )
        return name

    @property
    def relay_addresses(self) -> list[str]:
        return [relay.address for relay in self.relays.values()]

    @property
    def wan_addresses(self) -> dict[str, str]:
        """Router name -> its public (WAN) address."""
        return {name: router.wan_address for name, router in self.routers.items()}

    # ------------------------------------------------------------ building

    def add_relay(self, name: str | None = None) -> Relay:
        """A namespace with the next public address (203.0.113.10, .11, ...)."""
        index = len(self.relays)
        name = name if name is not None else f"r{index + 1}"
        _check_name(name)
        if name in self.relays:
            raise TestbedError(f"there is already a relay named {name}")
        if index >= len(_RELAY_HOSTS):
            raise TestbedError(f"at most {len(_RELAY_HOSTS)} relays")
        address = str(INTERNET.network_address + _RELAY_HOSTS[index])
        ns = self._new_namespace(f"relay-{name}")
        self._attach_to_internet(ns, port=f"r-{name}", inside="eth0", address=address)
        relay = Relay(name, ns, address)
        self.relays[name] = relay
        logger.info("testbed %s: relay %s at %s", self.prefix, name, address)
        return relay

    def add_peer(
        self,
        name: str,
        *,
        nat: NatKind | str = NatKind.SYMMETRIC,
        listen_port: int = DEFAULT_LISTEN_PORT,
        wireguard: bool = True,
    ) -> Peer:
        """A peer behind its own NAT router, with a wireguard-go interface if asked.

        The interface is ``<prefix>-<name>`` with tunnel address 10.99.0.N/24 and
        ``listen_port``; it has no WireGuard peers yet (``Peer.add_wireguard_peer``).
        """
        _check_name(name)
        if name in self.peers:
            raise TestbedError(f"there is already a peer named {name}")
        kind = NatKind(nat)
        router = self._add_router(name, kind, listen_port)
        ns = self._new_namespace(f"peer-{name}")
        router.ns.ip(
            "link", "add", Router.LAN_IF, "type", "veth", "peer", "name", "eth0", "netns", ns.name
        )
        router.ns.ip("address", "add", f"{router.lan_address}/{router.lan.prefixlen}", "dev", "lan")
        router.ns.ip("link", "set", Router.LAN_IF, "up")
        ns.ip("address", "add", f"{router.peer_address}/{router.lan.prefixlen}", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", router.lan_address)

        tunnel_address = str(TUNNEL_NETWORK.network_address + len(self.peers) + 1)
        wg = None
        if wireguard:
            wg = WireGuardInterface(
                ns, self.interface_name(name), self.key_dir, log_level=self.wireguard_log_level
            )
            self._interfaces.append(wg)  # before start(): close() must stop it if start fails
            wg.start(
                listen_port=listen_port, address=f"{tunnel_address}/{TUNNEL_NETWORK.prefixlen}"
            )
        peer = Peer(name, ns, router, tunnel_address, listen_port, wg)
        self.peers[name] = peer
        logger.info(
            "testbed %s: peer %s at %s behind %s NAT %s (tunnel %s)",
            self.prefix, name, peer.lan_address, kind.value, router.wan_address, tunnel_address,
        )  # fmt: skip
        return peer

    def _add_router(self, name: str, kind: NatKind, wg_port: int = DEFAULT_LISTEN_PORT) -> Router:
        index = len(self.routers)
        if index >= min(len(_ROUTER_HOSTS), _MAX_LANS):
            raise TestbedError(f"at most {min(len(_ROUTER_HOSTS), _MAX_LANS)} NAT routers")
        wan_address = str(INTERNET.network_address + _ROUTER_HOSTS[index])
        lan = ipaddress.IPv4Network(f"10.{index + 1}.0.0/24")
        ns = self._new_namespace(f"nat-{name}")
        self._attach_to_internet(ns, port=f"n-{name}", inside=Router.WAN_IF, address=wan_address)
        ns.sysctl("net.ipv4.ip_forward", "1")
        router = Router(name, ns, kind, wan_address, lan)
        router.apply_nat(kind, wg_port)
        self.routers[name] = router
        return router

    def _new_namespace(self, role: str) -> Namespace:
        ns = Namespace(self.namespace_name(role), self.log_dir)
        # Tracked before it exists: if creation fails half-way, close() still
        # looks for it (deleting checks existence first).
        self._namespaces.append(ns)
        ns.create()
        return ns

    def _attach_to_internet(self, ns: Namespace, *, port: str, inside: str, address: str) -> None:
        # Create the veth pair in inet with its other end directly in ns, so
        # neither end ever exists (and could clash by name) in the root namespace.
        self.inet.ip("link", "add", port, "type", "veth", "peer", "name", inside, "netns", ns.name)
        self.inet.ip("link", "set", port, "master", BRIDGE, "up")
        ns.ip("address", "add", f"{address}/{INTERNET.prefixlen}", "dev", inside)
        ns.ip("link", "set", inside, "up")

    def _claim_prefix(self) -> None:
        self.state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        in_use = {name.split("-", 1)[0] for name in list_namespaces()}
        in_use |= {p.name.split("-", 1)[0] for p in WG_SOCKET_DIR.glob("wr*-*.sock")}
        for _ in range(_PREFIX_ATTEMPTS):
            prefix = "wr" + secrets.token_hex(2)
            if prefix in in_use:
                continue
            work_dir = self.state_root / prefix
            try:
                # mkdir is the atomic claim: two testbeds cannot both create it.
                work_dir.mkdir(mode=0o700)
            except FileExistsError:
                continue
            write_owner(work_dir)
            self._prefix = prefix
            self._work_dir = work_dir
            return
        raise TestbedError(f"no free testbed prefix after {_PREFIX_ATTEMPTS} attempts")

    # ------------------------------------------------------------ diagnostics

    def processes(self) -> Iterator[BackgroundProcess]:
        for ns in self._namespaces:
            yield from ns.processes

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of every background process's log, for failure reports."""
        parts = []
        for proc in self.processes():
            status = "running" if proc.running() else f"exit status {proc.returncode}"
            parts.append(f"--- {proc.name} in {proc.namespace} ({status})\n{proc.log_tail(lines)}")
        return "\n".join(parts) if parts else "(no processes)"
