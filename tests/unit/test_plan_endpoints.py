"""Which of a relay's announced endpoints the planner uses: every one is tried
in turn, and one of a family this host has no route for never blocks the relay
(it is passed over at once instead of costing a connect timeout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.unit.test_plan import WALL0, Addr, World
from tests.unit.test_plan_relays import DEAD_END, HoleyWorld, announced
from wgrelay.client.events import HomeChanged
from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.discovery.reach import has_route
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.constants import Capability

UNROUTED_V6 = ("2001:db8::10", 51821)
"""The relay's IPv6 endpoint, on a host with IPv4 only."""
CONNECT_TIMEOUT_S = 2.0


class RecordingWorld(HoleyWorld):
    """A holey world that remembers every address a planner sent to."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_to: list[Addr] = []

    def _send(self, src: Addr, dst: Addr, data: bytes) -> None:
        if src in self.planners:
            self.sent_to.append(dst)
        super()._send(src, dst, data)


def ipv4_only(ep: Addr) -> bool:
    return ":" not in ep[0]


def planner(w: World, reg: RelayRegistry, reachable: Callable[[Addr], bool]) -> RelayPlanner:
    addr = ("198.51.100.1", 40000)
    p = RelayPlanner(
        PrivateKey.generate(),
        reg,
        now=w.now,
        wall=WALL0 + w.now,
        config=PlanConfig(measure_timeout_s=1.0, connect_timeout_s=CONNECT_TIMEOUT_S),
        link_config=LinkConfig(lost_after_s=3.0),
        reachable=reachable,
    )
    w.planners[addr] = p
    w.events[addr] = []
    return p


def test_an_endpoint_without_a_route_is_passed_over_at_once() -> None:
    w = RecordingWorld()
    r1 = w.relay(1, 0.010)
    reg = announced(w, r1, (UNROUTED_V6, r1[1]), int(Capability.UDP_RELAY))
    p = planner(w, reg, ipv4_only)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    assert w.now < CONNECT_TIMEOUT_S  # no timeout spent on the IPv6 endpoint
    assert p.relay_addr(r1[0]) == r1[1]
    assert UNROUTED_V6 not in w.sent_to
    assert w.saw(p, HomeChanged, relay=r1[0])


def test_without_the_route_check_the_same_relay_costs_a_timeout() -> None:
    # the comparison that makes the test above mean something
    w = RecordingWorld()
    r1 = w.relay(1, 0.010)
    reg = announced(w, r1, (UNROUTED_V6, r1[1]), int(Capability.UDP_RELAY))
    p = planner(w, reg, lambda _ep: True)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    assert w.now >= CONNECT_TIMEOUT_S
    assert UNROUTED_V6 in w.sent_to


def test_every_endpoint_is_tried_in_turn_skipping_unrouted_ones() -> None:
    w = RecordingWorld()
    r1 = w.relay(1, 0.010)
    endpoints = (DEAD_END, UNROUTED_V6, r1[1])  # silent, unrouted, the real one
    reg = announced(w, r1, endpoints, int(Capability.UDP_RELAY))
    p = planner(w, reg, ipv4_only)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    assert p.relay_addr(r1[0]) == r1[1]
    assert DEAD_END in w.sent_to
    assert UNROUTED_V6 not in w.sent_to
    first_real = w.sent_to.index(r1[1])
    assert set(w.sent_to[:first_real]) == {DEAD_END}  # in the announced order


def test_with_no_routed_endpoint_all_are_still_tried() -> None:
    w = RecordingWorld()
    r1 = w.relay(1, 0.010)
    reg = announced(w, r1, (DEAD_END, r1[1]), int(Capability.UDP_RELAY))
    p = planner(w, reg, lambda _ep: False)  # the route check knows nothing
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    assert p.relay_addr(r1[0]) == r1[1]


def test_has_route_on_the_real_kernel() -> None:
    assert has_route(("127.0.0.1", 9))
    assert has_route(("relay.example", 9))  # a name: not judged here


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_has_route_in_a_namespace_with_only_loopback() -> None:
    # a fresh network namespace: lo up, nothing else, no route beyond it
    code = (
        "from wgrelay.discovery.reach import has_route as h;"
        "print(h(('127.0.0.1', 9)), h(('203.0.113.10', 51821)), h(('2001:db8::10', 51821)))"
    )
    out = subprocess.run(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && "$0" -c "$1"',
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.split() == ["True", "False", "False"]


@pytest.mark.parametrize("host", ["::ffff:0:0:1", "fe80::1", "255.255.255.255"])
def test_has_route_never_raises(host: str) -> None:
    assert has_route((host, 9)) in (True, False)


def test_the_address_that_answered_comes_first_in_the_registry() -> None:
    w = RecordingWorld()
    r1 = w.relay(1, 0.010)
    reg = announced(w, r1, (UNROUTED_V6, r1[1]), int(Capability.UDP_RELAY))
    p = planner(w, reg, ipv4_only)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    relay = reg.get(r1[0])
    assert relay is not None
    assert relay.endpoint == r1[1]  # what status and metrics show: the address in use
    assert relay.endpoints == (r1[1], UNROUTED_V6)
    # a newer announcement (still IPv6 first) keeps it first
    core = w.relays[r1[1]]
    info = RelayNodeInfo(r1[0], (UNROUTED_V6, r1[1]), capabilities=int(Capability.UDP_RELAY))
    raw = encode_announcement(info, int((WALL0 + w.now) * 1000) + 1000, 600, core.identity)
    assert reg.register_relay(decode_announcement(raw))
    assert reg.get(r1[0]).endpoints == (r1[1], UNROUTED_V6)  # type: ignore[union-attr]
