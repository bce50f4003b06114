"""A wireguard-go interface inside a testbed namespace.

The kernel here has no WireGuard module, so every interface is a
``wireguard-go -f NAME`` process that we start and own. ``-f`` keeps it in the
foreground: a daemonized wireguard-go would be a stranger we could only find by
name, and we stop things by PID. It is configured with ``wg set`` and ``ip``,
run inside its namespace.

The control socket lives in ``/var/run/wireguard/NAME.sock``, a directory all
namespaces share: interface names must be unique on the whole machine, not just
in their namespace (the testbed prefixes them). wireguard-go removes the socket
when it gets SIGTERM; after a SIGKILL we remove it ourselves.

Private keys go to files with mode 0600 (``wg set ... private-key FILE``), never
onto a command line where ``ps`` would show them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wgrelay.keys import PrivateKey, PublicKey, write_key_file
from wgrelay.testbed.errors import TestbedError
from wgrelay.testbed.netns import BackgroundProcess, Namespace, wait_until

logger = logging.getLogger(__name__)

WG_SOCKET_DIR = Path("/var/run/wireguard")
MAX_IFNAME_LEN = 15  # IFNAMSIZ - 1
START_TIMEOUT_S = 5.0

WIREGUARD_GO_ENV = {
    # Debian's wireguard-go refuses to start on kernels that have (or could have)
    # the module unless told that we mean it.
    "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
}

Endpoint = tuple[str, int]
"""A UDP endpoint as (host, port)."""


def socket_path(ifname: str) -> Path:
    """Where wireguard-go puts the control socket of interface ``ifname``."""
    return WG_SOCKET_DIR / f"{ifname}.sock"


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_endpoint(text: str) -> Endpoint | None:
    if text == "(none)":
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class WgPeerStatus:
    """One peer line of ``wg show IFACE dump``."""

    public_key: PublicKey
    endpoint: Endpoint | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    """Unix time (seconds) of the last completed handshake; 0 means never."""
    rx_bytes: int
    tx_bytes: int
    keepalive_s: int | None


@dataclass(frozen=True, slots=True)
class WgDump:
    """``wg show IFACE dump``, without the private key."""

    public_key: PublicKey
    listen_port: int
    fwmark: int | None
    peers: tuple[WgPeerStatus, ...]

    def peer(self, public_key: PublicKey) -> WgPeerStatus | None:
        for status in self.peers:
            if status.public_key == public_key:
                return status
        return None


def parse_wg_dump(text: str) -> WgDump:
    """Parse ``wg show IFACE dump`` (tab-separated; first line is the interface)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise TestbedError("empty output from wg show dump")
    iface = lines[0].split("\t")
    if len(iface) != 4:
        raise TestbedError(f"unexpected interface line in wg show dump: {len(iface)} fields")
    peers = []
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise TestbedError(f"unexpected peer line in wg show dump: {len(f)} fields")
        peers.append(
            WgPeerStatus(
                public_key=PublicKey.from_base64(f[0]),
                endpoint=_parse_endpoint(f[2]),
                allowed_ips=() if f[3] == "(none)" else tuple(f[3].split(",")),
                latest_handshake=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                keepalive_s=None if f[7] == "off" else int(f[7]),
            )
        )
    return WgDump(
        public_key=PublicKey.from_base64(iface[1]),
        listen_port=int(iface[2]),
        fwmark=None if iface[3] == "off" else int(iface[3], 0),
        peers=tuple(peers),
    )


def wg_dump(ns: Namespace, ifname: str) -> WgDump:
    """``wg show IFACE dump`` of any interface in ``ns``, also ones we did not start
    (e.g. created by ``wgrelay up`` running in the namespace)."""
    return parse_wg_dump(ns.run(["wg", "show", ifname, "dump"]).stdout)


class WireGuardInterface:
    """A wireguard-go interface in a namespace, owned (and stopped) by us."""

    def __init__(
        self, ns: Namespace, name: str, key_dir: Path, *, log_level: str = "verbose"
    ) -> None:
        if not 1 <= len(name) <= MAX_IFNAME_LEN:
            raise TestbedError(f"interface name {name!r} must be 1-{MAX_IFNAME_LEN} characters")
        self.ns = ns
        self.name = name
        self.log_level = log_level
        self.private_key = PrivateKey.generate()
        self.public_key = self.private_key.public_key()
        self.key_path = key_dir / f"{name}.key"
        self.listen_port: int | None = None
        self.address: str | None = None
        self.process: BackgroundProcess | None = None

    def __repr__(self) -> str:
        return f"WireGuardInterface({self.name!r}, ns={self.ns.name!r})"

    @property
    def socket_path(self) -> Path:
        return socket_path(self.name)

    def start(self, *, listen_port: int, address: str) -> None:
        """Start wireguard-go, set key and port, add ``address`` (CIDR), bring it up."""
        if self.process is not None:
            raise TestbedError(f"{self!r} is already started")
        if not 1 <= listen_port <= 65535:
            # Checked here because wg(8) silently truncates: "listen-port 70000"
            # succeeds and listens on 4464.
            raise TestbedError(f"listen port must be 1-65535, not {listen_port}")
        if self.socket_path.exists():
            # Somebody else's interface of that name is alive (or crashed): ours
            # would take over its control socket. Refuse instead.
            raise TestbedError(f"{self.socket_path} already exists; is {self.name} in use?")
        write_key_file(self.key_path, self.private_key.raw)
        self.process = self.ns.popen(
            ["wireguard-go", "-f", self.name],
            name=f"wireguard-go-{self.name}",
            env={**WIREGUARD_GO_ENV, "LOG_LEVEL": self.log_level},
        )
        proc = self.process
        wait_until(lambda: self.socket_path.exists() or not proc.running(), START_TIMEOUT_S)
        if not proc.running() or not self.socket_path.exists():
            raise TestbedError(
                f"wireguard-go for {self.name} did not come up within {START_TIMEOUT_S:g} s "
                f"(exit status {proc.returncode}); its log:\n{proc.log_tail()}"
            )
        self.ns.run(
            [
                "wg", "set", self.name,
                "private-key", str(self.key_path),
                "listen-port", str(listen_port),
            ]
        )  # fmt: skip
        self.ns.ip("address", "add", address, "dev", self.name)
        self.ns.ip("link", "set", self.name, "up")
        self.listen_port = listen_port
        self.address = address
        logger.info(
            "wireguard-go %s up in %s: %s, port %d, key %s",
            self.name, self.ns.name, address, listen_port, self.public_key.short(),
        )  # fmt: skip

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        allowed_ips: Sequence[str],
        endpoint: Endpoint | None = None,
        keepalive_s: int | None = None,
    ) -> None:
        """Add a peer, or update it (``wg set`` merges into an existing peer)."""
        argv = ["wg", "set", self.name, "peer", str(public_key)]
        argv += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            argv += ["endpoint", format_endpoint(endpoint)]
        if keepalive_s is not None:
            argv += ["persistent-keepalive", str(keepalive_s)]
        self.ns.run(argv)

    def remove_peer(self, public_key: PublicKey) -> None:
        self.ns.run(["wg", "set", self.name, "peer", str(public_key), "remove"])

    def dump(self) -> WgDump:
        return wg_dump(self.ns, self.name)

    def latest_handshake(self, public_key: PublicKey) -> int:
        """Unix time of the last handshake with that peer; 0 if never (or unknown)."""
        status = self.dump().peer(public_key)
        return 0 if status is None else status.latest_handshake

    def wait_for_handshake(self, public_key: PublicKey, timeout: float) -> bool:
        return wait_until(lambda: self.latest_handshake(public_key) > 0, timeout, 0.1)

    def stop(self) -> None:
        """Stop wireguard-go (idempotent) and remove its socket if it left one."""
        if self.process is not None:
            self.process.stop()
        # Only remove the socket once our own process is gone (SIGKILL leaves it
        # behind). Never started means the socket, if any, is someone else's.
        if self.process is not None and not self.process.running():
            self.socket_path.unlink(missing_ok=True)
