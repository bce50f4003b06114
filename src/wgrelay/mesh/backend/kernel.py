"""The kernel backend: WireGuard through the ``wg`` tool.

``wg show IFACE dump`` prints one tab-separated line for the interface and one
per peer (wg(8), "dump")::

    private-key  public-key  listen-port  fwmark
    public-key  preshared-key  endpoint  allowed-ips  latest-handshake  rx  tx  keepalive

Absent values are spelled ``(none)`` (keys, endpoint, allowed-ips), ``off``
(fwmark, keepalive) or ``0`` (listen-port, latest-handshake); allowed-ips are
comma-separated; fwmark is hex (``0x..``); latest-handshake is whole Unix
seconds. Peers come sorted by latest handshake, which we do not rely on.

``wg`` also speaks the UAPI: when ``/var/run/wireguard/IFACE.sock`` exists it
uses that instead of netlink, so this backend works against wireguard-go too
(the system tests rely on it to check the parser on real output).

Writing: ``wg set IFACE peer KEY endpoint HOST:PORT``. ``wg`` has no
update-only switch, so ``wg set`` on a peer that was removed meanwhile would
create it again (with no allowed-ips). ``set_endpoint`` therefore checks the
peer is present first; the window between the check and the set remains and
only a netlink client (``WGPEER_F_UPDATE_ONLY``) could close it.

The command runner is injected, so tests feed recorded ``wg`` output and the
host needs no WireGuard module to test this file.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from wgrelay.endpoint import Endpoint
from wgrelay.errors import BackendError, InvalidKey
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.backend.base import (
    SYS_CLASS_NET,
    InterfaceInfo,
    PeerInfo,
    check_interface_name,
    format_endpoint,
    is_cidr,
    parse_endpoint,
    read_mtu,
    sort_peers,
)

DEFAULT_TIMEOUT_S = 5.0
"""``wg`` answers in milliseconds; this only bounds a wedged kernel or daemon."""

Runner = Callable[[Sequence[str]], str]
"""Runs argv and returns its stdout. Raises ``CommandFailed`` on a non-zero exit,
``BackendError`` for anything else (``OSError`` and ``subprocess`` errors are
translated by the backend too)."""

_NONE = "(none)"
_OFF = "off"
_INTERFACE_FIELDS = 4
_PEER_FIELDS = 8


class CommandFailed(BackendError):
    """A command ran and exited non-zero (e.g. ``wg show`` on a missing device)."""

    def __init__(self, message: str, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def run_command(argv: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The production ``Runner``: run argv without a shell, with a timeout."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError:
        raise BackendError(f"{argv[0]} not found (install wireguard-tools)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{' '.join(argv[:3])} timed out after {timeout_s:g}s") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BackendError(f"cannot run {argv[0]}: {e}") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no error message"])[0]
        raise CommandFailed(
            f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {first}",
            proc.returncode,
            proc.stderr,
        )
    return proc.stdout


# ------------------------------------------------------------------ parser


def _field_error(interface: str, what: str, value: str) -> BackendError:
    return BackendError(f"wg show {interface}: bad {what} {value[:60]!r}")


def _uint(interface: str, what: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise _field_error(interface, what, value)
    return int(value)


def _public_key(interface: str, what: str, value: str) -> PublicKey | None:
    if value == _NONE:
        return None
    try:
        return PublicKey.from_base64(value)
    except InvalidKey:
        raise _field_error(interface, what, value) from None


def _parse_interface_line(
    interface: str, fields: list[str]
) -> tuple[PrivateKey | None, PublicKey | None, int | None, int | None]:
    priv_text, pub_text, port_text, fwmark_text = fields
    private_key = None
    if priv_text != _NONE:
        try:
            private_key = PrivateKey.from_base64(priv_text)
        except InvalidKey:
            # Never echo what may be most of a private key into a log line.
            raise BackendError(f"wg show {interface} dump: bad private key") from None
    public_key = _public_key(interface, "public key", pub_text)
    port = _uint(interface, "listen port", port_text)
    if port > 0xFFFF:
        raise _field_error(interface, "listen port", port_text)
    fwmark = None
    if fwmark_text != _OFF:
        try:
            fwmark = int(fwmark_text, 16 if fwmark_text.startswith("0x") else 10)
        except ValueError:
            raise _field_error(interface, "fwmark", fwmark_text) from None
        if fwmark < 0:
            raise _field_error(interface, "fwmark", fwmark_text)
    return private_key, public_key, port or None, fwmark or None


def _parse_peer_line(interface: str, fields: list[str]) -> PeerInfo:
    key_text, psk_text, ep_text, ips_text, hs_text, rx_text, tx_text, ka_text = fields
    key = _public_key(interface, "peer key", key_text)
    if key is None:
        raise _field_error(interface, "peer key", key_text)
    endpoint = None
    if ep_text != _NONE:
        try:
            endpoint = parse_endpoint(ep_text)
        except ValueError:
            raise _field_error(interface, "endpoint", ep_text) from None
    allowed_ips: tuple[str, ...] = ()
    if ips_text != _NONE:
        allowed_ips = tuple(ips_text.split(","))
        for cidr in allowed_ips:
            if not is_cidr(cidr):
                raise _field_error(interface, "allowed-ip", cidr)
    handshake = _uint(interface, "latest handshake", hs_text)
    keepalive = None if ka_text == _OFF else _uint(interface, "keepalive", ka_text)
    return PeerInfo(
        public_key=key,
        endpoint=endpoint,
        allowed_ips=allowed_ips,
        latest_handshake=float(handshake) if handshake else None,
        rx_bytes=_uint(interface, "rx bytes", rx_text),
        tx_bytes=_uint(interface, "tx bytes", tx_text),
        persistent_keepalive=keepalive or None,
        preshared_key=None if psk_text == _NONE else _preshared_key(interface, psk_text),
    )


def _preshared_key(interface: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BackendError(f"wg show {interface} dump: bad preshared key")
    return raw


def parse_dump(text: str, interface: str) -> InterfaceInfo:
    """Parse the output of ``wg show IFACE dump`` (single interface form)."""
    lines = text.rstrip("\n").split("\n")
    head = lines[0].split("\t")
    if len(head) != _INTERFACE_FIELDS:
        raise BackendError(
            f"wg show {interface} dump: interface line has {len(head)} fields, "
            f"expected {_INTERFACE_FIELDS}"
        )
    private_key, public_key, listen_port, fwmark = _parse_interface_line(interface, head)
    peers = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != _PEER_FIELDS:
            raise BackendError(
                f"wg show {interface} dump: line {number} has {len(fields)} fields, "
                f"expected {_PEER_FIELDS}"
            )
        peers.append(_parse_peer_line(interface, fields))
    return InterfaceInfo(
        name=interface,
        private_key=private_key,
        public_key=public_key,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=sort_peers(peers),
    )


# ------------------------------------------------------------------ backend


class KernelBackend:
    """``WireGuardBackend`` through the ``wg`` command-line tool."""

    name = "kernel"

    def __init__(
        self,
        *,
        runner: Runner | None = None,
        wg: str = "wg",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        sys_class_net: Path = SYS_CLASS_NET,
    ) -> None:
        self._runner: Runner = runner or functools.partial(run_command, timeout_s=timeout_s)
        self._wg = wg
        self._sys_class_net = sys_class_net

    def __repr__(self) -> str:
        return f"KernelBackend(wg={self._wg!r})"

    def read(self, interface: str) -> InterfaceInfo:
        check_interface_name(interface)
        return parse_dump(self._run("show", interface, "dump"), interface)

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        check_interface_name(interface)
        ep_text = format_endpoint(endpoint)  # validates before any command runs
        if peer not in self._peer_keys(interface):
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")
        self._run("set", interface, "peer", str(peer), "endpoint", ep_text)

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        check_interface_name(interface)
        if not 0 <= seconds <= 0xFFFF:
            raise BackendError(f"persistent keepalive {seconds} out of range 0-65535")
        if peer not in self._peer_keys(interface):
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")
        key = str(peer)
        if kick and seconds:
            # the kernel sends a keepalive when the interval goes from off to on
            self._run("set", interface, "peer", key, "persistent-keepalive", "off")
        value = str(seconds) if seconds else "off"
        self._run("set", interface, "peer", key, "persistent-keepalive", value)

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        check_interface_name(interface)
        ep_text = format_endpoint(endpoint)
        if not 0 <= keepalive_s <= 0xFFFF:
            raise BackendError(f"persistent keepalive {keepalive_s} out of range 0-65535")
        key = str(peer.public_key)
        # one wg invocation, one netlink transaction: remove, then add back
        argv = ["set", interface, "peer", key, "remove", "peer", key, "endpoint", ep_text]
        argv += ["persistent-keepalive", str(keepalive_s) if keepalive_s else "off"]
        argv += ["allowed-ips", ",".join(peer.allowed_ips)]
        with contextlib.ExitStack() as stack:
            if peer.preshared_key is not None:
                # wg reads a preshared key only from a file: a private one, gone after
                fd, path = tempfile.mkstemp(prefix="wgrelay-psk-")
                stack.callback(os.unlink, path)
                with os.fdopen(fd, "w") as f:
                    f.write(base64.b64encode(peer.preshared_key).decode() + "\n")
                argv += ["preshared-key", path]
            self._run(*argv)

    def exists(self, interface: str) -> bool:
        """True if ``wg show IFACE`` succeeds; a missing ``wg`` still raises."""
        check_interface_name(interface)
        try:
            self._run("show", interface, "public-key")
        except CommandFailed:
            return False
        return True

    def mtu(self, interface: str) -> int | None:
        return read_mtu(interface, self._sys_class_net)

    def _peer_keys(self, interface: str) -> set[PublicKey]:
        keys = set()
        for line in self._run("show", interface, "peers").split():
            key = _public_key(interface, "peer key", line)
            if key is not None:
                keys.add(key)
        return keys

    def _run(self, *args: str) -> str:
        argv = [self._wg, *args]
        try:
            return self._runner(argv)
        except BackendError:
            raise
        except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as e:
            raise BackendError(f"{' '.join(argv[:3])} failed: {e}") from None
