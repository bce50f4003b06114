"""System tests of the network-namespace testbed itself.

Before the relay's system tests rely on it, the testbed has to show that its NAT
routers behave like the NATs we claim to model (a direct tunnel between two
symmetric NATs must fail, a port forward or cone NATs must make it work, a relay
on the internet sees the NAT's public address) and that it leaves nothing
behind, also when a test fails or a run crashes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgrelay.testbed import (
    CommandFailed,
    NatKind,
    Peer,
    Testbed,
    TestbedError,
    cleanup_stale_testbeds,
    list_namespaces,
    run_command,
)
from wgrelay.testbed.netns import pid_alive
from wgrelay.testbed.topology import BRIDGE_ADDRESS
from wgrelay.testbed.wireguard import WG_SOCKET_DIR

pytestmark = pytest.mark.system

# A direct tunnel that cannot work must still be failing after this long: well
# past wireguard-go's first handshake and a reply's round trip in namespaces.
NO_TUNNEL_WAIT_S = 3.0
TUNNEL_UP_TIMEOUT_S = 5.0
ECHO_PORT = 3478
CLIENT_PORT = 40000

UDP_ECHO_SERVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, (host, port) = sock.recvfrom(2048)
    print(f"from {host}:{port}", flush=True)
    sock.sendto(f"{host}:{port}".encode(), (host, port))
"""

# Sends from one fixed local port to every target and prints what each one saw.
# argv: local port, reply timeout in seconds (per try), host:port targets...
UDP_ECHO_CLIENT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
for target in sys.argv[3:]:
    host, port = target.rsplit(":", 1)
    for _ in range(3):
        sock.sendto(b"hello", (host, int(port)))
        try:
            data, _ = sock.recvfrom(2048)
            break
        except TimeoutError:
            continue
    else:
        sys.exit(f"no reply from {target}")
    print(data.decode())
"""


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    with Testbed() as tb:
        yield tb


def _both_ways(a: Peer, b: Peer, *, keepalive_s: int | None = None) -> None:
    """Configure a and b as WireGuard peers, each dialling the other's WAN address."""
    a.add_wireguard_peer(b, endpoint=b.wan_endpoint, keepalive_s=keepalive_s)
    b.add_wireguard_peer(a, endpoint=a.wan_endpoint, keepalive_s=keepalive_s)


def _leftovers(prefix: str) -> list[str]:
    names = [name for name in list_namespaces() if name.startswith(f"{prefix}-")]
    return names + [str(p) for p in WG_SOCKET_DIR.glob(f"{prefix}-*.sock")]


# ---------------------------------------------------------------- NAT behaviour


def test_no_direct_tunnel_between_symmetric_nats(testbed: Testbed) -> None:
    a = testbed.add_peer("a", nat=NatKind.SYMMETRIC)
    b = testbed.add_peer("b", nat=NatKind.SYMMETRIC)
    # Both sides keep trying (keepalive makes each initiate on its own), which
    # is exactly what would open a path through cone NATs.
    _both_ways(a, b, keepalive_s=1)

    assert not a.ping(b.tunnel_address, timeout=NO_TUNNEL_WAIT_S)
    assert a.wireguard().latest_handshake(b.wireguard().public_key) == 0
    assert b.wireguard().latest_handshake(a.wireguard().public_key) == 0
    # a did send handshake initiations: the NATs dropped them, setup did not fail.
    assert a.wireguard().dump().peers[0].tx_bytes > 0


@pytest.mark.parametrize("path", ["port_forward", "cone"])
def test_direct_tunnel_with_port_forward_or_cone_nats(testbed: Testbed, path: str) -> None:
    if path == "port_forward":
        a = testbed.add_peer("a", nat=NatKind.SYMMETRIC)
        b = testbed.add_peer("b", nat=NatKind.SYMMETRIC)
        b.router.open_port_forward(b.listen_port)
        a.add_wireguard_peer(b, endpoint=b.wan_endpoint)
        b.add_wireguard_peer(a)  # learns a's (random) public port from the handshake
    else:
        a = testbed.add_peer("a", nat=NatKind.CONE)
        b = testbed.add_peer("b", nat=NatKind.CONE)
        # Hole punching needs both sides to send; keepalive makes them start.
        _both_ways(a, b, keepalive_s=1)

    assert a.ping(b.tunnel_address, timeout=TUNNEL_UP_TIMEOUT_S)
    assert b.ping(a.tunnel_address, count=3, timeout=TUNNEL_UP_TIMEOUT_S)
    assert a.wireguard().latest_handshake(b.wireguard().public_key) > 0
    b_sees_a = b.wireguard().dump().peer(a.wireguard().public_key)
    assert b_sees_a is not None
    assert b_sees_a.endpoint is not None
    assert b_sees_a.endpoint[0] == a.router.wan_address


@pytest.mark.parametrize("kind", [NatKind.SYMMETRIC, NatKind.CONE])
def test_relay_sees_the_nat_public_address(testbed: Testbed, kind: NatKind) -> None:
    relays = [testbed.add_relay(), testbed.add_relay()]
    peer = testbed.add_peer("a", nat=kind, wireguard=False)
    servers = [
        relay.popen(
            [sys.executable, "-c", UDP_ECHO_SERVER, relay.address, str(ECHO_PORT)], name="echo"
        )
        for relay in relays
    ]
    for server in servers:
        assert server.wait_for_log("ready", timeout=5.0), server.read_log()

    targets = [f"{relay.address}:{ECHO_PORT}" for relay in relays]
    out = peer.ns.run(
        [sys.executable, "-c", UDP_ECHO_CLIENT, str(CLIENT_PORT), "1.0", *targets]
    ).stdout
    seen = [line.rsplit(":", 1) for line in out.split()]

    assert [host for host, _ in seen] == [peer.router.wan_address] * 2
    assert f"from {peer.router.wan_address}:" in servers[0].read_log()
    ports = [int(port) for _, port in seen]
    if kind is NatKind.SYMMETRIC:
        # Endpoint-dependent mapping: each destination sees another random port.
        # (Flaky with probability ~1/64000, when the two random ports coincide.)
        assert ports[0] != ports[1]
    else:
        assert ports == [CLIENT_PORT, CLIENT_PORT]


def test_loss_and_udp_block(testbed: Testbed) -> None:
    relay = testbed.add_relay()
    peer = testbed.add_peer("a", wireguard=False)

    relay.set_loss(30)  # nft accepts the rule (statistics would take too long here)
    assert "numgen random mod 100 < 30" in relay.ns.run(["nft", "list", "ruleset"]).stdout
    relay.set_loss(100)
    assert not peer.ping(relay.address, timeout=1.0)
    relay.set_loss(0)
    assert peer.ping(relay.address, timeout=2.0)

    server = relay.popen(
        [sys.executable, "-c", UDP_ECHO_SERVER, relay.address, str(ECHO_PORT)], name="echo"
    )
    assert server.wait_for_log("ready", timeout=5.0)
    client = [
        sys.executable,
        "-c",
        UDP_ECHO_CLIENT,
        str(CLIENT_PORT),
        "0.3",  # per try, 3 tries: a blocked exchange fails within a second
        f"{relay.address}:{ECHO_PORT}",
    ]
    peer.block_udp()
    assert peer.ns.run(client, check=False).returncode != 0
    assert peer.ping(relay.address, timeout=2.0)  # only UDP is blocked
    peer.block_udp(False)
    assert peer.ns.run(client).returncode == 0


def test_failed_command_names_command_and_stderr(testbed: Testbed) -> None:
    with pytest.raises(CommandFailed, match=r"ip link show nosuchdev.*does not exist"):
        testbed.inet.run(["ip", "link", "show", "nosuchdev"])


# ---------------------------------------------------------------- teardown


@dataclass
class Seen:
    """What a testbed created, noted while it was alive."""

    prefix: str = ""
    work_dir: Path = Path("/nonexistent")
    pids: list[int] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def _build_and_end(how: str, seen: Seen) -> None:
    """Build a small testbed, note what it created in ``seen``, and end as told."""
    with Testbed() as tb:
        seen.prefix = tb.prefix
        seen.work_dir = tb.work_dir
        relay = tb.add_relay()
        tb.add_peer("a")
        # A shell whose child outlives it: teardown must find the orphan by its
        # namespace, since only the shell's PID was recorded.
        shell = relay.popen(["sh", "-c", "sleep 300 & echo $!; wait"], name="shell")
        assert shell.wait_for_log("\n", timeout=5.0)
        seen.pids = [p.pid for p in tb.processes()] + [int(shell.read_log().split()[0])]
        seen.leftovers = _leftovers(tb.prefix)
        if how == "exception":
            raise RuntimeError("boom")
        if how == "build fails":
            # Refused only after b's router and namespace exist: a half-built testbed.
            tb.add_peer("b", listen_port=70000)


@pytest.mark.parametrize("how", ["clean exit", "exception", "build fails"])
def test_close_leaves_nothing_behind(how: str) -> None:
    seen = Seen()
    if how == "clean exit":
        _build_and_end(how, seen)
    elif how == "exception":
        with pytest.raises(RuntimeError, match="boom"):
            _build_and_end(how, seen)
    else:
        with pytest.raises(TestbedError, match="listen port must be 1-65535, not 70000"):
            _build_and_end(how, seen)

    assert len(seen.leftovers) == 5  # inet, relay, nat, peer namespaces + wg socket
    assert len(seen.pids) == 3  # wireguard-go, shell, the shell's orphan
    assert _leftovers(seen.prefix) == []
    assert [pid for pid in seen.pids if pid_alive(pid)] == []
    assert not seen.work_dir.exists()


def test_close_is_idempotent() -> None:
    tb = Testbed()
    tb.close()  # never opened: nothing to do
    with tb:
        tb.add_relay()
        prefix = tb.prefix
    tb.close()
    assert _leftovers(prefix) == []


CRASHING_OWNER = """
import os, sys
from pathlib import Path
from wgrelay.testbed import Testbed
tb = Testbed(state_root=Path(sys.argv[1]), wireguard_log_level="error")
tb.open()
relay = tb.add_relay()
peer = tb.add_peer("a")
sleeper = relay.popen(["sleep", "300"], name="sleeper")
print(tb.prefix, sleeper.pid, peer.wireguard().process.pid, flush=True)
os._exit(1)  # die without close(), as a crash or SIGKILL would
"""


def test_cleanup_of_crashed_testbed(tmp_path: Path) -> None:
    with Testbed(state_root=tmp_path, clean_stale=False) as alive:
        alive.add_relay()
        out = run_command([sys.executable, "-c", CRASHING_OWNER, str(tmp_path)], check=False)
        prefix, *pid_texts = out.stdout.split()
        pids = [int(p) for p in pid_texts]
        assert len(_leftovers(prefix)) == 5, out.stderr  # inet, relay, nat, peer + socket
        assert all(pid_alive(pid) for pid in pids)

        started = time.monotonic()
        assert cleanup_stale_testbeds(tmp_path) == [prefix]
        elapsed = time.monotonic() - started

        assert _leftovers(prefix) == []
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (tmp_path / prefix).exists()
        assert elapsed < 5.0  # SIGTERM sufficed; nobody waited for SIGKILL
        # A live testbed in the same place is not touched.
        assert len(_leftovers(alive.prefix)) == 2
        assert alive.relays["r1"].ping(BRIDGE_ADDRESS, timeout=2.0)
        assert cleanup_stale_testbeds(tmp_path) == []
    assert os.listdir(tmp_path) == []
