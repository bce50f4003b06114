"""Port mode for real: wireguard-go behind symmetric NATs (nftables) talks
straight to the relay's session ports, forwarded by the kernel (nftables
offload) or, without CAP_NET_ADMIN, by the relay's sockets (issue:
zero-overhead relaying)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

PORTS = (52000, 52999)
UDP_PAYLOAD = 1200
"""iperf3 datagram size for the bandwidth checks."""
WG_PACKET = 1264
"""What WireGuard makes of one: inner IPv4+UDP (28 B) + payload, padded to 16,
plus 32 B of WireGuard header and tag."""
USERSPACE_CHARGE = WG_PACKET + 64
"""The relay's sockets charge each packet its size plus packet_overhead_bytes."""
KERNEL_CHARGE = WG_PACKET + 28
"""nftables' limit counts the whole IP packet (outer IPv4 + UDP headers)."""


@pytest.fixture
def mesh() -> Iterator[tuple[MeshScenario, Relay, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        try:
            yield sc, relay, a, b
        finally:
            for name, proc in [*sc.agents.items(), *((n, r.process) for n, r in sc.relays.items())]:
                if proc.running():
                    print(f"--- {name} log ---\n{proc.log_tail(30)}")


def _offload_table(relay: Relay) -> dict[str, object] | None:
    res = relay.ns.run(["nft", "-j", "list", "table", "inet", "wgrelay"], check=False)
    if res.returncode != 0:
        return None
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def _session_ports_in(table: dict[str, object] | None) -> set[int]:
    """The relay ports the table's verdict maps send somewhere."""
    found: set[int] = set()
    items = table.get("nftables", []) if table else []
    for item in items if isinstance(items, list) else []:
        m = item.get("map") if isinstance(item, dict) else None
        for elem in (m or {}).get("elem", []) or []:
            key = elem[0] if isinstance(elem, list) else None
            parts = key.get("concat", []) if isinstance(key, dict) else []
            found.update(p for p in parts if isinstance(p, int) and PORTS[0] <= p <= PORTS[1])
    return found


def _up_in_port_mode(sc: MeshScenario, relay: Relay, a: Peer, b: Peer) -> tuple[int, int]:
    """Both agents up, the tunnel working through session ports: the ports."""
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=15.0) is not None, sc.agent_log(a)[-3000:]
    ports = []
    for me, other in ((a, b), (b, a)):

        def on_port(me: Peer = me, other: Peer = other) -> bool:
            ep = sc.wg_peer(me, other).endpoint
            return ep is not None and ep[0] == relay.address and PORTS[0] <= ep[1] <= PORTS[1]

        assert wait_until(on_port, 10), (sc.wg_peer(me, other), sc.agent_log(me)[-2000:])
        ep = sc.wg_peer(me, other).endpoint
        assert ep is not None
        ports.append(ep[1])
    return ports[0], ports[1]


def _wait_offloaded(
    sc: MeshScenario, relay: Relay, a: Peer, b: Peer, want: set[int] | int, timeout: float
) -> None:
    """Until the offload table carries ``want`` (the ports, or how many),
    with a ping each round: the relay offloads a session once both sides
    send from their latched addresses, and a side whose last packet came
    framed (one in flight at its switch) shows that with its next packet,
    which an idle tunnel may not send for a while."""

    def carried() -> bool:
        a.ping(b.tunnel_address, timeout=0.5)
        ports = _session_ports_in(_offload_table(relay))
        return want <= ports if isinstance(want, set) else len(ports) == want

    if wait_until(carried, timeout):
        return
    # what the relay and both WireGuards say, for whoever reads the failure
    for p in (a, b):
        print(p.name, p.ns.run(["wg", "show", "all", "dump"], check=False).stdout)
    for p in (a, b):
        print(f"--- agent {p.name} ---\n{sc.agent_log(p)[-2500:]}")
    raise AssertionError((_offload_table(relay), sc.relays[relay.name].process.read_log()[-3000:]))


def _iperf_tcp(a: Peer, b: Peer, seconds: int = 4) -> float:
    server = b.popen(
        ["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf3-server"
    )
    assert wait_until(lambda: "listening" in server.read_log().lower(), 5), server.read_log()
    res = a.ns.run(["iperf3", "-c", b.tunnel_address, "-t", str(seconds), "-J"], timeout=60)
    bps = float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"])
    server.wait(10)
    return bps


def _iperf_udp_received(a: Peer, b: Peer, offered_bps: int, seconds: int = 7) -> float:
    """Payload bytes per second b's iperf3 server received of a UDP flood,
    from its per-second reports after the first 2 s: the kernel's byte bucket
    starts full with a second of the rate (nftables' limit counts per
    second), which a short run would count as going over."""
    server = b.popen(["iperf3", "-s", "-1", "-J", "-B", b.tunnel_address], name="iperf3-udp-server")
    assert wait_until(lambda: ":5201 " in b.ns.run(["ss", "-ltnH"]).stdout, 5)
    a.ns.run(
        ["iperf3", "-c", b.tunnel_address, "-u", "-b", str(offered_bps), "-l", str(UDP_PAYLOAD),
         "-t", str(seconds)],
        timeout=60,
    )  # fmt: skip
    server.wait(15)
    text = server.read_log()
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    late = [i["sum"] for i in report["intervals"][2:] if float(i["sum"]["seconds"]) > 0.5]
    assert late, report["intervals"]
    return sum(float(i["bytes"]) for i in late) / sum(float(i["seconds"]) for i in late)


def test_kernel_offload_carries_the_tunnel_and_a_kill_9_leaves_nothing_behind(
    mesh: tuple[MeshScenario, Relay, Peer, Peer],
) -> None:
    sc, relay, a, b = mesh
    relay.ns.sysctl("net.ipv4.ip_forward", "1")  # the test's own namespace
    args = ("--kernel-offload", "on", "--max-bandwidth", "0")
    sc.start_relay(relay, *args)
    assert "kernel offload: nftables table inet wgrelay" in sc.relays["r1"].process.read_log()
    pa, pb = _up_in_port_mode(sc, relay, a, b)
    _wait_offloaded(sc, relay, a, b, {pa, pb}, 10)
    mbps = _iperf_tcp(a, b) / 1e6
    print(f"relayed iperf3 through port mode, kernel offload: {mbps:.1f} Mbit/s")
    assert mbps > 0
    log = sc.relays["r1"].process.read_log()
    assert "Traceback" not in log
    # kill -9: the table outlives the process, and the next start empties it
    sc.kill_relay("r1", signal.SIGKILL)
    assert {pa, pb} <= _session_ports_in(_offload_table(relay))
    sc.start_relay(relay, *args)
    assert _session_ports_in(_offload_table(relay)) == set(), _offload_table(relay)
    assert sc.wait_ping(a, b, timeout=20.0) is not None, sc.agent_log(a)[-3000:]
    # (the agents notice the restart, re-register and latch the new ports with
    # WireGuard's next initiation: up to 5 s apart, more on a loaded machine)
    _wait_offloaded(sc, relay, a, b, 2, 30)
    # a clean stop takes the table with it
    sc.kill_relay("r1", signal.SIGTERM)
    assert _offload_table(relay) is None


def test_without_cap_net_admin_port_mode_runs_in_userspace(
    mesh: tuple[MeshScenario, Relay, Peer, Peer],
) -> None:
    sc, relay, a, b = mesh
    relay.ns.sysctl("net.ipv4.ip_forward", "1")  # offload would be possible but for the caps
    state = sc.tb.work_dir / "relay-r1"
    proc = relay.popen(
        ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", sc.python, "-m",
         "wgrelay", "start-relay", "--open", "--state-dir", str(state), "--port", "51821",
         "--announce", f"{relay.address}:51821", "--max-bandwidth", "0"],
        name="relay-nocap",
    )  # fmt: skip
    assert proc.wait_for_log("listening on", 15), proc.log_tail()
    assert "port mode in userspace" in proc.read_log()
    from wgrelay.keys import PublicKey
    from wgrelay.testbed.scenario import _READY, RunningRelay

    m = _READY.search(proc.read_log())
    assert m is not None
    sc.relays["r1"] = RunningRelay(relay, proc, PublicKey.from_base64(m.group(1)), state)
    _up_in_port_mode(sc, relay, a, b)
    assert _offload_table(relay) is None
    mbps = _iperf_tcp(a, b) / 1e6
    print(f"relayed iperf3 through port mode, userspace: {mbps:.1f} Mbit/s")
    assert mbps > 0


@pytest.mark.parametrize("mode", ["kernel", "userspace"])
def test_max_bandwidth_holds_within_ten_percent(
    mesh: tuple[MeshScenario, Relay, Peer, Peer], mode: str
) -> None:
    sc, relay, a, b = mesh
    kbps = 250  # KB/s per direction: 2 Mbit/s, offered 5x that
    relay.ns.sysctl("net.ipv4.ip_forward", "1")
    offload = "on" if mode == "kernel" else "off"
    sc.start_relay(relay, "--kernel-offload", offload, "--max-bandwidth", str(kbps))
    _up_in_port_mode(sc, relay, a, b)
    if mode == "kernel":
        _wait_offloaded(sc, relay, a, b, 2, 10)
    got = _iperf_udp_received(a, b, offered_bps=kbps * 1000 * 8 * 5)
    charge = KERNEL_CHARGE if mode == "kernel" else USERSPACE_CHARGE
    expected = kbps * 1000 * UDP_PAYLOAD / charge
    print(f"{mode}: cap {kbps} KB/s -> {got / 1000:.1f} KB/s of payload "
          f"(expected {expected / 1000:.1f}, {got / expected:.3f}x)")  # fmt: skip
    assert 0.9 * expected <= got <= 1.1 * expected
