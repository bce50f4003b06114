"""What the planner uses of a relay's announcement: every endpoint, its
capabilities, and the load its PONGs report."""

from __future__ import annotations

from tests.unit.test_plan import WALL0, Addr, World
from wgrelay.client.events import HomeChanged
from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.constants import Capability

DEAD_END = ("203.0.113.250", 51821)
"""An address where nothing answers (the relay's unreachable first endpoint)."""


class HoleyWorld(World):
    """Datagrams to an address nobody has are lost, as on the internet."""

    def _send(self, src: Addr, dst: Addr, data: bytes) -> None:
        if dst in self.relays or dst in self.planners:
            super()._send(src, dst, data)


def announced(
    w: World, relay: tuple[PublicKey, Addr], endpoints: tuple[Addr, ...], caps: int
) -> RelayRegistry:
    """A registry that learned ``relay`` from its signed announcement."""
    core = w.relays[relay[1]]
    info = RelayNodeInfo(relay[0], endpoints, capabilities=caps, load_pct=5)
    raw = encode_announcement(info, int((WALL0 + w.now) * 1000), 600, core.identity)
    reg = RelayRegistry()
    assert reg.register_relay(decode_announcement(raw))
    return reg


def planner(w: World, n: int, reg: RelayRegistry) -> RelayPlanner:
    addr = (f"198.51.100.{n}", 40000)
    p = RelayPlanner(
        PrivateKey.generate(),
        reg,
        now=w.now,
        wall=WALL0 + w.now,
        config=PlanConfig(measure_timeout_s=1.0, connect_timeout_s=2.0),
        link_config=LinkConfig(lost_after_s=3.0),
    )
    w.planners[addr] = p
    w.events[addr] = []
    return p


def test_a_relay_silent_at_its_first_endpoint_is_reached_at_the_next() -> None:
    w = HoleyWorld()
    r1 = w.relay(1, 0.010)
    reg = announced(w, r1, (DEAD_END, r1[1]), int(Capability.UDP_RELAY))
    p = planner(w, 1, reg)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0], limit_s=60)
    assert p.relay_addr(r1[0]) == r1[1]
    assert w.saw(p, HomeChanged, relay=r1[0])


def test_a_relay_that_does_not_relay_udp_is_not_used() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.010), w.relay(2, 0.050)
    reg = announced(w, r1, (r1[1],), int(Capability.DISCOVERY))  # a directory, no relaying
    reg.add_bootstrap(r2[0], r2[1])
    p = planner(w, 1, reg)
    p.start(w.now)
    w.run_until(lambda: p.home is not None)
    assert p.home == r2[0]  # the slower one: the faster relays nothing
    assert [r.key for r in p.available(w.now)] == [r2[0]]


def test_the_load_in_a_pong_is_remembered() -> None:
    w = World()
    r1 = w.relay(1, 0.010)
    reg = RelayRegistry()
    reg.add_bootstrap(r1[0], r1[1])
    p = planner(w, 1, reg)
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0])
    known = reg.get(r1[0])
    assert known is not None
    assert known.load_pct == w.relays[r1[1]].load_pct()
