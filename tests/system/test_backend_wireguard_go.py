"""Both backends against a real wireguard-go, in a network namespace of our own.

Two wireguard-go interfaces, A and B, live in one fresh namespace and are
peers of each other over 127.0.0.1 (the namespace's own loopback, so no packet
leaves it). A has a third peer, C, that nobody runs: it keeps an endpoint and
allowed-ips but never completes a handshake. Then:

* ``UserspaceBackend`` (the UAPI socket) and ``KernelBackend`` (the real ``wg``
  binary, which talks to the same socket) must report the configuration, and
  the A-B handshake and counters once they happen;
* ``set_endpoint`` must move one endpoint and leave everything else alone.

UAPI sockets live in /var/run/wireguard, shared by all namespaces, so the test
process reaches them from the root namespace; sysfs is per namespace, so the
MTU is read by a child process inside it. Interface names are unique per run.
Every process is stopped by PID and the namespace deleted, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey, write_key_file
from wgrelay.mesh.backend import (
    InterfaceInfo,
    KernelBackend,
    PeerInfo,
    UserspaceBackend,
    detect_backend,
)

pytestmark = pytest.mark.system

SOCKET_DIR = Path("/var/run/wireguard")
WG_GO_ENV = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
PORT_A, PORT_B, PORT_C = 51001, 51002, 51003  # free: the namespace is new
START_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.02


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    name = f"wrbk{secrets.token_hex(2)}"
    assert not namespace_exists(name)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=20)


@contextlib.contextmanager
def wireguard_go(netns: str, interface: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``wireguard-go -f`` inside ``netns`` until the context ends."""
    sock = SOCKET_DIR / f"{interface}.sock"
    assert not sock.exists(), f"{sock} already exists"
    with log.open("wb") as out:
        # `ip netns exec` execs the command, so proc.pid is wireguard-go's own PID.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "wireguard-go", "-f", interface],
            env=WG_GO_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        probe = UserspaceBackend(timeout_s=1.0)
        wait_until(
            lambda: proc.poll() is not None or probe.exists(interface),
            START_TIMEOUT_S,
            f"wireguard-go {interface} to listen",
        )
        if proc.poll() is not None:
            raise AssertionError(f"wireguard-go exited: {log.read_text(errors='replace')}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        sock.unlink(missing_ok=True)  # wireguard-go removes it on SIGTERM, not on SIGKILL


@dataclass(frozen=True)
class Mesh:
    netns: str
    a: str
    b: str
    key_a: PrivateKey
    key_b: PrivateKey
    key_c: PublicKey
    pids: tuple[int, ...]

    def wg(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.netns, "wg", *args)


@contextlib.contextmanager
def mesh_in_namespace(tmp_path: Path) -> Iterator[Mesh]:
    suffix = secrets.token_hex(3)
    a, b = f"wrbka{suffix}", f"wrbkb{suffix}"
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    key_c = PrivateKey.generate().public_key()
    key_file_a, key_file_b = tmp_path / "a.key", tmp_path / "b.key"
    write_key_file(key_file_a, key_a.raw)  # mode 0600, as wg expects of key files
    write_key_file(key_file_b, key_b.raw)
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(network_namespace())
        proc_a = stack.enter_context(wireguard_go(netns, a, tmp_path / "a.log"))
        proc_b = stack.enter_context(wireguard_go(netns, b, tmp_path / "b.log"))
        m = Mesh(netns, a, b, key_a, key_b, key_c, (proc_a.pid, proc_b.pid))
        # B first: A's persistent keepalive starts a handshake as soon as A has
        # its peer, and B should be ready to answer it.
        m.wg("set", b, "private-key", str(key_file_b), "listen-port", str(PORT_B),
             "peer", str(key_a.public_key()), "allowed-ips", "10.77.0.1/32",
             "endpoint", f"127.0.0.1:{PORT_A}")  # fmt: skip
        m.wg("set", a, "private-key", str(key_file_a), "listen-port", str(PORT_A),
             "peer", str(key_c), "allowed-ips", "10.77.0.3/32,fd77::3/128",
             "endpoint", f"127.0.0.1:{PORT_C}",
             "peer", str(key_b.public_key()), "allowed-ips", "10.77.0.2/32",
             "endpoint", f"127.0.0.1:{PORT_B}", "persistent-keepalive", "25")  # fmt: skip
        yield m


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with mesh_in_namespace(tmp_path) as m:
        yield m


def stable(peer: PeerInfo | None) -> tuple[object, ...]:
    """The configured part of a peer: what traffic never changes."""
    assert peer is not None
    return peer.public_key, peer.endpoint, peer.allowed_ips, peer.persistent_keepalive


def test_userspace_read_matches_configuration(mesh: Mesh) -> None:
    info = UserspaceBackend().read(mesh.a)
    assert info.name == mesh.a
    assert info.private_key == mesh.key_a
    assert info.public_key == mesh.key_a.public_key()
    assert info.listen_port == PORT_A
    assert info.fwmark is None
    assert len(info.peers) == 2
    assert stable(info.peer(mesh.key_b.public_key())) == (
        mesh.key_b.public_key(), ("127.0.0.1", PORT_B), ("10.77.0.2/32",), 25,
    )  # fmt: skip
    c = info.peer(mesh.key_c)
    assert stable(c) == (mesh.key_c, ("127.0.0.1", PORT_C), ("10.77.0.3/32", "fd77::3/128"), None)
    assert c is not None
    assert c.latest_handshake is None  # nobody runs C
    assert c.rx_bytes == 0


def test_handshake_and_counters_seen_by_both_backends(mesh: Mesh) -> None:
    userspace, kernel = UserspaceBackend(), KernelBackend()
    peer_b = mesh.key_b.public_key()

    def handshaken() -> bool:
        b = userspace.read(mesh.a).peer(peer_b)
        return b is not None and b.latest_handshake is not None

    wait_until(handshaken, HANDSHAKE_TIMEOUT_S, "the A-B handshake")
    via_uapi = userspace.read(mesh.a).peer(peer_b)
    via_wg = kernel.read(mesh.a).peer(peer_b)  # read second: may only have grown
    assert via_uapi is not None
    assert via_wg is not None
    assert via_uapi.latest_handshake is not None
    assert via_wg.latest_handshake is not None
    assert abs(via_uapi.latest_handshake - time.time()) < 60
    # wg prints whole seconds, the UAPI adds nanoseconds.
    assert via_wg.latest_handshake >= int(via_uapi.latest_handshake)
    assert via_uapi.tx_bytes > 0
    assert via_uapi.rx_bytes > 0
    assert via_wg.tx_bytes >= via_uapi.tx_bytes
    assert via_wg.rx_bytes >= via_uapi.rx_bytes
    # B saw the handshake too, from the other side.
    a_on_b = userspace.read(mesh.b).peer(mesh.key_a.public_key())
    assert a_on_b is not None
    assert a_on_b.latest_handshake is not None


def test_kernel_backend_reads_the_same_through_real_wg(mesh: Mesh) -> None:
    via_uapi = UserspaceBackend().read(mesh.a)
    via_wg = KernelBackend().read(mesh.a)
    assert (via_wg.name, via_wg.private_key, via_wg.public_key, via_wg.listen_port) == (
        via_uapi.name, via_uapi.private_key, via_uapi.public_key, via_uapi.listen_port,
    )  # fmt: skip
    assert via_wg.fwmark == via_uapi.fwmark
    assert [stable(p) for p in via_wg.peers] == [stable(p) for p in via_uapi.peers]
    c = via_wg.peer(mesh.key_c)
    assert c is not None
    assert c.latest_handshake is None


def assert_only_c_moved(
    before: InterfaceInfo, after: InterfaceInfo, mesh: Mesh, to: object
) -> None:
    c_before, c_after = before.peer(mesh.key_c), after.peer(mesh.key_c)
    assert c_before is not None
    assert c_after is not None
    assert c_after.endpoint == to
    assert c_after.allowed_ips == c_before.allowed_ips
    assert c_after.persistent_keepalive == c_before.persistent_keepalive
    peer_b = mesh.key_b.public_key()
    assert stable(after.peer(peer_b)) == stable(before.peer(peer_b))
    assert (after.private_key, after.listen_port) == (before.private_key, before.listen_port)


def test_userspace_set_endpoint_changes_only_that_endpoint(mesh: Mesh) -> None:
    backend = UserspaceBackend()
    before = backend.read(mesh.a)
    backend.set_endpoint(mesh.a, mesh.key_c, ("::1", 40000))
    assert_only_c_moved(before, backend.read(mesh.a), mesh, ("::1", 40000))
    # The same change as wg sees it.
    c = KernelBackend().read(mesh.a).peer(mesh.key_c)
    assert c is not None
    assert c.endpoint == ("::1", 40000)


def test_kernel_set_endpoint_changes_only_that_endpoint(mesh: Mesh) -> None:
    before = UserspaceBackend().read(mesh.a)
    KernelBackend().set_endpoint(mesh.a, mesh.key_c, ("127.0.0.1", 40001))
    assert_only_c_moved(before, UserspaceBackend().read(mesh.a), mesh, ("127.0.0.1", 40001))


@pytest.mark.parametrize("backend", [UserspaceBackend(), KernelBackend()], ids=lambda b: b.name)
def test_set_endpoint_never_creates_a_peer(
    mesh: Mesh, backend: UserspaceBackend | KernelBackend
) -> None:
    stranger = PrivateKey.generate().public_key()
    with pytest.raises(BackendError, match="is not on interface"):
        backend.set_endpoint(mesh.a, stranger, ("127.0.0.1", 40002))
    info = UserspaceBackend().read(mesh.a)
    assert info.peer(stranger) is None
    assert len(info.peers) == 2


def test_detect_backend_picks_userspace(mesh: Mesh) -> None:
    backend = detect_backend(mesh.a)
    assert isinstance(backend, UserspaceBackend)
    assert backend.read(mesh.a).listen_port == PORT_A
    assert isinstance(detect_backend(mesh.a, preferred="kernel"), KernelBackend)
    absent = f"wrbkz{secrets.token_hex(3)}"
    with pytest.raises(BackendError, match=f"interface {absent} not found"):
        detect_backend(absent)


def test_mtu_inside_the_namespace(mesh: Mesh) -> None:
    # sysfs shows only the devices of the reader's namespace: ask from inside.
    code = (
        "import sys; from wgrelay.mesh.backend import UserspaceBackend as U; "
        "print(U().mtu(sys.argv[1]), U().mtu('nosuchdev0'))"
    )
    out = run("ip", "netns", "exec", mesh.netns, sys.executable, "-c", code, mesh.a)
    assert out.split() == ["1420", "None"]
    assert UserspaceBackend().mtu(mesh.a) is None  # not visible from the root namespace


def test_cleanup_is_complete_even_when_the_test_fails(tmp_path: Path) -> None:
    class TestFailed(Exception):
        pass

    seen: list[Mesh] = []
    try:
        with mesh_in_namespace(tmp_path) as m:
            seen.append(m)
            raise TestFailed
    except TestFailed:
        pass
    (m,) = seen
    assert not namespace_exists(m.netns)
    for iface in (m.a, m.b):
        assert not (SOCKET_DIR / f"{iface}.sock").exists()
    for pid in m.pids:
        assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("backend", [UserspaceBackend(), KernelBackend()], ids=lambda b: b.name)
def test_keepalive_kick_starts_a_handshake_at_once(
    mesh: Mesh, backend: UserspaceBackend | KernelBackend
) -> None:
    # C is never answered, so every initiation WireGuard sends to it shows in tx_bytes
    def tx_to_c() -> int:
        peer = UserspaceBackend().read(mesh.a).peer(mesh.key_c)
        assert peer is not None
        return peer.tx_bytes

    before = tx_to_c()
    backend.set_keepalive(mesh.a, mesh.key_c, 25, kick=True)
    wait_until(lambda: tx_to_c() > before, 2.0, "a handshake initiation towards C")
    c = UserspaceBackend().read(mesh.a).peer(mesh.key_c)
    assert c is not None
    assert c.persistent_keepalive == 25
    backend.set_keepalive(mesh.a, mesh.key_c, 0)
    c = UserspaceBackend().read(mesh.a).peer(mesh.key_c)
    assert c is not None
    assert c.persistent_keepalive is None


@pytest.mark.parametrize("backend", [UserspaceBackend(), KernelBackend()], ids=lambda b: b.name)
def test_restart_peer_keeps_its_configuration_and_handshakes_at_once(
    mesh: Mesh, backend: UserspaceBackend | KernelBackend, tmp_path: Path
) -> None:
    """Port mode restarts a peer to get a handshake through a relay port: the
    peer comes back as it was (a preshared key too: the new handshake needs
    it), at the new endpoint, with its counters from 0."""
    psk = tmp_path / "psk"
    write_key_file(psk, bytes(range(32)))
    peer_b, peer_a = mesh.key_b.public_key(), mesh.key_a.public_key()
    mesh.wg("set", mesh.a, "peer", str(peer_b), "preshared-key", str(psk))
    mesh.wg("set", mesh.b, "peer", str(peer_a), "preshared-key", str(psk))

    def b_seen_from_a() -> PeerInfo:
        p = UserspaceBackend().read(mesh.a).peer(peer_b)
        assert p is not None
        return p

    wait_until(
        lambda: (b_seen_from_a().latest_handshake or 0) > 0, HANDSHAKE_TIMEOUT_S, "a handshake"
    )
    wait_until(lambda: b_seen_from_a().rx_bytes > 0, HANDSHAKE_TIMEOUT_S, "traffic from B")
    before = b_seen_from_a()
    assert before.preshared_key == bytes(range(32))
    backend.restart_peer(mesh.a, before, ("127.0.0.1", PORT_B), 25)
    after = b_seen_from_a()
    assert stable(after) == stable(before)
    assert after.preshared_key == before.preshared_key
    # counters from 0: fewer bytes than before, or none yet, or the fresh
    # handshake already done (on loopback it can complete before this read:
    # its 92-byte response is then all B sent, as before the restart)
    fresh = (after.latest_handshake or 0) > (before.latest_handshake or 0)
    assert after.rx_bytes < before.rx_bytes or after.latest_handshake is None or fresh
    # a fresh handshake at once (not at WireGuard's next rekey, minutes away)
    wait_until(
        lambda: (b_seen_from_a().latest_handshake or 0) > (before.latest_handshake or 0),
        HANDSHAKE_TIMEOUT_S,
        "a handshake after the restart",
    )
    assert [p.public_key for p in UserspaceBackend().read(mesh.a).peers] == sorted(
        [mesh.key_c, peer_b], key=lambda k: k.raw
    )
    assert not list(Path(tempfile.gettempdir()).glob("wgrelay-psk-*"))
