"""``--capacity`` on the kernel offload's path: wireguard-go behind symmetric
NATs, the session in port mode and forwarded by nftables, no per-session
cap (``--max-bandwidth 0``): the relay installs the path at the session's
share of the capacity, and a UDP flood through the tunnel gets no more."""

from __future__ import annotations

import pytest

from tests.system.test_port_mode_ns import (
    KERNEL_CHARGE,
    UDP_PAYLOAD,
    _iperf_udp_received,
    _up_in_port_mode,
    _wait_offloaded,
    mesh,
)
from wgrelay.testbed.scenario import MeshScenario
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

__all__ = ["mesh"]  # (the fixture, shared with the port mode tests)

CAPACITY = 250_000  # bytes/s: 2 Mbit/s, offered 5x that


def test_capacity_holds_in_the_kernel(mesh: tuple[MeshScenario, Relay, Peer, Peer]) -> None:
    sc, relay, a, b = mesh
    relay.ns.sysctl("net.ipv4.ip_forward", "1")
    sc.start_relay(relay, "--kernel-offload", "on", "--max-bandwidth", "0", "--capacity", "250kB/s")
    _up_in_port_mode(sc, relay, a, b)
    _wait_offloaded(sc, relay, a, b, 2, 10)
    got = _iperf_udp_received(a, b, offered_bps=CAPACITY * 8 * 5)
    expected = CAPACITY * UDP_PAYLOAD / KERNEL_CHARGE
    log = sc.relays["r1"].process.read_log()
    print(f"kernel, --capacity 250kB/s: {got / 1000:.1f} KB/s of payload "
          f"(expected {expected / 1000:.1f}, {got / expected:.3f}x)")  # fmt: skip
    assert 0.85 * expected <= got <= 1.1 * expected
    assert "Traceback" not in log
    assert "kernel offload of session port" not in log  # (no install refused)
