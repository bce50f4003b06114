"""``--capacity`` on the kernel offload's path: wireguard-go behind symmetric
NATs, the session in port mode and forwarded by nftables, no per-session
cap (``--max-bandwidth 0``): the relay installs the path at the session's
share of the capacity, and a UDP flood through the tunnel gets no more."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.system.test_port_mode_ns import (
    KERNEL_CHARGE,
    UDP_PAYLOAD,
    _iperf_udp_received,
    _offload_table,
    _up_in_port_mode,
    _wait_offloaded,
    mesh,
)
from wgrelay.testbed import wait_until
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


def _kernel_limits(relay: Relay) -> list[int]:
    """Every ``limit rate over N bytes/second`` in the offload's table."""
    found: list[int] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            lim = x.get("limit")
            if isinstance(lim, dict) and lim.get("rate_unit") == "bytes":
                found.append(int(lim["rate"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(_offload_table(relay))
    return found


def test_a_capacity_set_by_sighup_reaches_a_path_in_the_kernel(
    mesh: tuple[MeshScenario, Relay, Peer, Peer], tmp_path: Path
) -> None:
    """The path goes to the kernel with no limit (--max-bandwidth 0, no
    capacity); a SIGHUP that sets --capacity re-installs it at the session's
    share, and a UDP flood gets no more than the capacity."""
    sc, relay, a, b = mesh
    relay.ns.sysctl("net.ipv4.ip_forward", "1")
    conf = tmp_path / "relay.toml"
    conf.write_text("max-bandwidth = 0\n")
    running = sc.start_relay(relay, "--kernel-offload", "on", "--config", str(conf))
    _up_in_port_mode(sc, relay, a, b)
    _wait_offloaded(sc, relay, a, b, 2, 10)
    assert _kernel_limits(relay) == []  # unlimited
    conf.write_text('max-bandwidth = 0\ncapacity = "250kB/s"\n')
    os.kill(running.process.pid, signal.SIGHUP)
    assert wait_until(lambda: "reloaded:" in running.process.read_log(), 15)
    assert wait_until(lambda: _kernel_limits(relay) != [], 10), _offload_table(relay)
    assert all(0 < rate <= CAPACITY for rate in _kernel_limits(relay))
    got = _iperf_udp_received(a, b, offered_bps=CAPACITY * 8 * 5)
    expected = CAPACITY * UDP_PAYLOAD / KERNEL_CHARGE
    print(f"kernel, --capacity 250kB/s by SIGHUP: {got / 1000:.1f} KB/s of payload "
          f"(expected {expected / 1000:.1f}, {got / expected:.3f}x)")  # fmt: skip
    assert 0.85 * expected <= got <= 1.1 * expected
    log = running.process.read_log()
    assert "Traceback" not in log
    assert "kernel offload of session port" not in log
