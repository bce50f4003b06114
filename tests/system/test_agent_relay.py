"""Real WireGuard (wireguard-go) behind real NAT (nftables) in namespaces, with
relays and agents as real processes (issue: the agent and the data path)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator

import pytest

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


@pytest.fixture
def mesh() -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    """One relay; peers a and b behind symmetric NAT, each configured with the
    other's public (NAT) address as endpoint: the direct attempt that fails."""
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        sc.start_relay(relay)
        try:
            yield sc, a, b
        finally:
            for name, proc in sc.agents.items():
                if proc.running():
                    print(f"--- agent {name} log ---\n{proc.log_tail(40)}")


def test_direct_path_is_really_blocked(mesh: tuple[MeshScenario, Peer, Peer]) -> None:
    sc, a, b = mesh
    # without agents, WireGuard alone cannot get through two symmetric NATs
    assert not a.ping(b.tunnel_address, timeout=6.0)
    assert sc.wg_peer(a, b).latest_handshake == 0


def test_relayed_tunnel_comes_up_by_itself_within_ten_seconds(
    mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = mesh
    sc.start_agent(a)
    sc.start_agent(b)
    took = sc.wait_ping(a, b, timeout=10.0)
    assert took is not None, sc.agent_log(a)[-3000:]
    for me, other in ((a, b), (b, a)):
        st = sc.wg_peer(me, other)
        assert st.endpoint is not None
        # port mode: WireGuard talks to the relay's session port, no local proxy
        assert st.endpoint[0] == sc.relays["r1"].relay.address, st
        assert st.endpoint[1] != 51821, st
        assert time.time() - st.latest_handshake < 30
    assert b.ping(a.tunnel_address, timeout=2.0)
    log_a = sc.agent_log(a)
    assert "relaying at once, direct tried in the background" in log_a  # relay first
    assert "relayed (via relay" in log_a

    def path() -> object:
        status = sc.status(a)
        peers = status.get("peers") if status else None
        return peers[0]["path"] if isinstance(peers, list) and peers else None

    assert wait_until(lambda: path() == "relayed", 5), sc.status(a)
    assert wait_until(lambda: _relay_mode(sc, a) == "port", 8), sc.status(a)
    print(f"ping through the relay {took:.1f} s after the agents started")


def _relay_mode(sc: MeshScenario, p: Peer) -> object:
    status = sc.status(p)
    peers = status["peers"] if status else None
    return peers[0].get("relay_mode") if isinstance(peers, list) and peers else None


def test_iperf3_through_the_relayed_tunnel(mesh: tuple[MeshScenario, Peer, Peer]) -> None:
    sc, a, b = mesh
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    server = b.popen(
        ["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf3-server"
    )
    assert wait_until(lambda: "listening" in server.read_log().lower(), 5)
    res = a.ns.run(["iperf3", "-c", b.tunnel_address, "-t", "5", "-J"], timeout=30)
    report = json.loads(res.stdout)
    received = report["end"]["sum_received"]
    assert received["bytes"] > 0
    print(f"relayed iperf3: {received['bits_per_second'] / 1e6:.1f} Mbit/s")


def test_relay_restart_brings_the_tunnel_back_without_restarting_agents(
    mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = mesh
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    relay = sc.relays["r1"]
    sc.kill_relay("r1")
    assert not a.ping(b.tunnel_address, timeout=2.0)
    sc.start_relay(relay.relay)  # same key file, same port
    took = sc.wait_ping(a, b, timeout=30.0)
    assert took is not None, sc.agent_log(a)[-3000:]
    assert wait_until(lambda: _relay_mode(sc, a) == "port", 10), sc.status(a)
    assert sc.wg_peer(a, b).endpoint[0] == relay.relay.address  # type: ignore[index]
    assert sc.agents["a"].running()
    assert sc.agents["b"].running()
    print(f"tunnel back {took:.1f} s after the relay restarted")


def test_stopping_the_agent_restores_endpoints(mesh: tuple[MeshScenario, Peer, Peer]) -> None:
    sc, a, b = mesh
    before = {p.name: sc.wg_peer(p, o) for p, o in ((a, b), (b, a))}
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    relay_ip = sc.relays["r1"].relay.address
    assert sc.wg_peer(a, b).endpoint[0] == relay_ip  # type: ignore[index]  # port mode
    for p in (a, b):
        assert sc.stop_agent(p) == 0
    for p, o in ((a, b), (b, a)):
        after = sc.wg_peer(p, o)
        assert after.endpoint == before[p.name].endpoint  # the NAT address it had
        assert after.keepalive_s == before[p.name].keepalive_s
        assert "restoring endpoints" in sc.agent_log(p)


def test_killing_the_active_relay_fails_over_and_tcp_survives() -> None:
    with Testbed() as tb:
        [r1, r2], a, b = two_peers(tb, "symmetric", relays=("r1", "r2"))
        sc = MeshScenario(tb)
        sc.start_relay(r1)
        sc.start_relay(r2)
        sc.start_agent(a)
        sc.start_agent(b)
        assert sc.wait_ping(a, b, timeout=15.0) is not None
        # a TCP connection inside the tunnel, exchanging a line every 0.2 s
        server = b.popen(["python3", "-c", ECHO_SERVER, b.tunnel_address], name="echo")
        assert server.wait_for_log("ready", 5)
        client = a.popen(["python3", "-c", ECHO_CLIENT, b.tunnel_address, "30"], name="client")
        assert client.wait_for_log("line 5 ok", 10)
        status = sc.status(a)
        assert status is not None
        active = status["peers"][0]["relay"]  # type: ignore[index]
        victim = next(n for n, r in sc.relays.items() if str(r.key) == active)
        sc.kill_relay(victim)
        t0 = time.monotonic()
        assert wait_until(
            lambda: (
                (s := sc.status(a)) is not None
                and s["peers"][0]["path"] == "relayed"  # type: ignore[index]
                and s["peers"][0]["relay"] not in (None, active)  # type: ignore[index]
            ),
            60,
        ), sc.agent_log(a)[-4000:]
        assert sc.wait_ping(a, b, timeout=20) is not None
        print(f"failed over from {victim} in {time.monotonic() - t0:.1f} s")
        assert client.wait(timeout=90) == 0, client.read_log()[-2000:]
        assert "all lines echoed" in client.read_log()


ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.create_server((sys.argv[1], 7000))
    print("ready", flush=True)
    c, _ = s.accept()
    with c:
        while data := c.recv(4096):
            c.sendall(data)
    """
)

ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, duration = sys.argv[1], float(sys.argv[2])
    c = socket.create_connection((host, 7000), timeout=90)
    end, n = time.monotonic() + duration, 0
    f = c.makefile("rwb")
    while time.monotonic() < end:
        n += 1
        f.write(b"line %d\\n" % n); f.flush()
        assert f.readline() == b"line %d\\n" % n
        print(f"line {n} ok", flush=True)
        time.sleep(0.2)
    print("all lines echoed", flush=True)
    """
)
