"""The planner's choice between one relay and two (client/plan_paths.py).

Our home H is 12 ms away and carries legs to X (the peer's home, 22 ms from
H, 402 ms from us) and S (the peer's standby, 162 ms from H and from us).
The peer reports 12 ms to X and 162 ms to S. So (ms): through S alone
162 + 162 = 324, through X alone 402 + 12 = 414, through H and X
12 + 22 + 12 + 10 = 56, through H and S 12 + 162 + 162 + 10 = 346.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tests.unit.test_plan import WALL0, World
from wgrelay.client.events import Place
from wgrelay.client.link import LinkState
from wgrelay.client.link_legs import LegsLink
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.client.plan_paths import LEG_FAILURE_MEMORY_S
from wgrelay.client.plan_state import Attempt, Phase
from wgrelay.client.privacy import PrivacyConfig
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.discovery.selection import SWITCH_HOLD_S
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.constants import Capability
from wgrelay.proto.messages import PeerLocation, SessionOffer

NOW = 1000.0
_CAPS = Capability.UDP_RELAY | Capability.MULTI_HOP


@dataclass
class Scene:
    p: RelayPlanner
    home: PublicKey
    x: PublicKey
    s: PublicKey
    peer: PublicKey

    @property
    def home_link(self) -> LegsLink:
        link = self.p.link(self.home)
        assert isinstance(link, LegsLink)
        return link

    def attempt(self) -> Attempt:
        return Attempt(self.peer, Phase.CONNECTING, NOW, places=self.p._places[self.peer])

    def carried_by(self, relay: PublicKey, via: PublicKey | None = None) -> None:
        """The peer's session is at ``relay`` (through ``via``)."""
        link = self.p._link(relay, NOW)
        assert link is not None
        link.state = LinkState.REGISTERED
        link.session_of[self.peer] = bytes(8)
        if via is not None:
            link.via[self.peer] = via
        self.p.route_relay[self.peer] = relay


def scene(leg_to_x_ms: float | None = 22.0, caps: int = _CAPS) -> Scene:
    reg = RelayRegistry()
    keys = []
    for n, rtt in ((1, 12.0), (2, 402.0), (3, 162.0)):
        ident = RelayIdentity.generate()
        info = RelayNodeInfo(ident.public, ((f"203.0.113.{n}", 51821),), capabilities=caps)
        raw = encode_announcement(info, int(WALL0 * 1000), 600, ident)
        assert reg.register_relay(decode_announcement(raw))
        reg.record_rtt(ident.public, rtt)
        keys.append(ident.public)
    home, x, s = keys
    p = RelayPlanner(PrivateKey.generate(), reg, now=NOW, wall=WALL0, config=PlanConfig())
    p.home = home
    link = p._link(home, NOW)
    assert isinstance(link, LegsLink)
    link.state = LinkState.REGISTERED
    link.leg_rtts = {s: 162.0} if leg_to_x_ms is None else {x: leg_to_x_ms, s: 162.0}
    link.leg_rtts_at = NOW
    # the agent with the smaller key weighs two relays: we ask
    peer = PublicKey(b"\xff" * 32)
    p._places[peer] = (
        Place(PeerLocation(x, ("203.0.113.2", 51821)), 12, False),
        Place(PeerLocation(s, ("203.0.113.3", 51821)), 162, True),
    )
    return Scene(p, home, x, s, peer)


def test_the_options_and_their_costs() -> None:
    sc = scene()
    options = [(round(o.cost), o.entry, o.exit_relay) for o in sc.p._path_options(sc.peer, NOW)]
    assert options == [
        (56, sc.home, sc.x),
        (324, sc.s, None),
        (346, sc.home, sc.s),
        (414, sc.x, None),
    ]


def test_two_near_relays_go_first_when_cheaper_than_any_one() -> None:
    sc = scene()
    attempt = sc.attempt()
    singles = sc.p._candidates(attempt, NOW)
    assert attempt.bridges == [sc.x]  # through our home to X, before any single relay
    assert singles[:2] == [sc.s, sc.x]


def test_one_relay_stays_first_when_the_leg_is_slow_or_unmeasured_or_not_run() -> None:
    for sc in (scene(leg_to_x_ms=400.0), scene(leg_to_x_ms=None)):
        attempt = sc.attempt()
        sc.p._candidates(attempt, NOW)
        assert attempt.bridges == []
    # the home's figures are three measuring rounds old: not used
    sc = scene()
    sc.home_link.leg_rtts_at = NOW - 3 * sc.p.config.measure_interval_s - 1
    attempt = sc.attempt()
    sc.p._candidates(attempt, NOW)
    assert attempt.bridges == []
    # relays that announced no multi-hop
    sc = scene(caps=Capability.UDP_RELAY)
    attempt = sc.attempt()
    sc.p._candidates(attempt, NOW)
    assert attempt.bridges == []


def test_failed_two_relay_requests_are_not_repeated_for_a_while() -> None:
    """Each failure costs the pair 250 ms (as a failed session costs a
    relay): 56 + 250 is still under 324, 56 + 500 is not."""
    sc = scene()
    for n in range(2):
        attempt = sc.attempt()
        sc.p._candidates(attempt, NOW + n)
        assert attempt.bridges.pop(0) == sc.x  # (asked through X: _bridge)
        attempt.current, attempt.via = sc.home, sc.x
        attempt.candidates = [sc.s]
        sc.p._attempts[sc.peer] = attempt
        sc.p._connect_next(attempt, NOW + n)  # (the request through X failed: the next step)
        assert attempt.current == sc.s  # it went on to the best single relay
    later = sc.attempt()
    sc.p._candidates(later, NOW + 1)
    assert later.bridges == []
    again = sc.attempt()
    sc.home_link.leg_rtts_at = NOW + 1 + LEG_FAILURE_MEMORY_S  # (its answer is fresh)
    sc.p._candidates(again, NOW + 1 + LEG_FAILURE_MEMORY_S)
    assert again.bridges == [sc.x]


def test_a_peer_on_one_far_relay_moves_to_two_near_ones() -> None:
    sc = scene()
    sc.carried_by(sc.s)
    sc.p._reconsider(sc.peer, sc.s, NOW)
    attempt = sc.p._attempts[sc.peer]
    assert attempt.moving
    assert attempt.current == sc.home
    assert attempt.via == sc.x
    assert sc.home_link.via[sc.peer] == sc.x  # the request is out, through X
    # and not again within SWITCH_HOLD_S, whatever happens
    del sc.p._attempts[sc.peer]
    sc.p._reconsider(sc.peer, sc.s, NOW + SWITCH_HOLD_S - 1)
    assert sc.peer not in sc.p._attempts


def test_no_move_for_a_small_gain() -> None:
    # through H and X: 12 + 232 + 12 + 10 = 266 against 324 through S:
    # 58 ms but under a quarter (the hysteresis)
    sc = scene(leg_to_x_ms=232.0)
    sc.carried_by(sc.s)
    sc.p._reconsider(sc.peer, sc.s, NOW)
    assert sc.peer not in sc.p._attempts
    sc = scene(leg_to_x_ms=200.0)  # 234: 90 ms, more than a quarter
    sc.carried_by(sc.s)
    sc.p._reconsider(sc.peer, sc.s, NOW)
    assert sc.p._attempts[sc.peer].via == sc.x


def test_two_relays_whose_leg_got_slow_give_way_to_one_that_shares_neither() -> None:
    sc = scene(leg_to_x_ms=600.0)  # 634 now
    sc.carried_by(sc.home, via=sc.x)
    assert sc.p.exit_relay(sc.peer) == sc.x
    sc.p._reconsider(sc.peer, sc.home, NOW)
    attempt = sc.p._attempts[sc.peer]
    # X alone (414) is cheaper than S (324)? no: S; and X is on the current
    # path anyway (it holds the pair's session): S
    assert attempt.current == sc.s
    assert attempt.via is None


def test_never_to_a_path_through_a_relay_of_the_current_one() -> None:
    """On X alone (414), H and X (56) are much cheaper, but X holds the
    pair's session: a new one through it would meet it there. S (324) is
    not worth the move from 414 (90 ms, under a quarter): the peer stays."""
    sc = scene()
    sc.carried_by(sc.x)
    sc.p._reconsider(sc.peer, sc.x, NOW)
    assert sc.peer not in sc.p._attempts


# ------------------------------------------------------------ a home tells its agent


def test_a_home_relay_tells_its_agent_the_relays_it_runs_legs_with_and_their_rtt() -> None:
    """Relay 1 lists relays 2 and 3 for legs; relay 3 is not in its
    federation (nothing to open a leg to), relay 2 is: 10 + 30 ms away."""
    w = World()
    r1, r2 = w.relay(1, 0.010), w.relay(2, 0.030)
    r3 = RelayIdentity.generate().public
    core1, core2 = w.relays[r1[1]], w.relays[r2[1]]
    core1.announce_endpoints, core2.announce_endpoints = (r1[1],), (r2[1],)
    core1.reconfigure(config=replace(core1.config, leg_relays=frozenset({r2[0].raw, r3.raw})))
    core1.add_bootstrap(*r2)
    core2.add_bootstrap(*r1)
    p = w.peer(1, [r1])
    p.start(w.now)
    w.run_until(lambda: p.home == r1[0])
    link = p.link(r1[0])
    assert isinstance(link, LegsLink)
    assert link.state == LinkState.REGISTERED
    # the relays meet (gossip, then SWIM probes time each other)
    w.run_until(lambda: core1.federation.rtts.rtt_ms(r2[0], w.now) is not None, limit_s=30)
    link.ask_leg_rtts(w.now)
    w.run_until(lambda: link.leg_rtts.get(r2[0]) is not None, limit_s=30)
    assert link.leg_rtts == {r2[0]: 40.0}
    assert link.leg_rtts_at <= w.now


def test_only_the_side_that_asks_first_weighs_two_relays() -> None:
    """The peer's key is the smaller: it asks (at once, mesh/agent.py), and
    were we to ask through two relays too, in the opposite direction, the
    relays would refuse both crossing legs."""
    sc = scene()
    peer = PublicKey(bytes(32))
    sc.p._places[peer] = sc.p._places[sc.peer]
    attempt = Attempt(peer, Phase.CONNECTING, NOW, places=sc.p._places[peer])
    sc.p._candidates(attempt, NOW)
    assert attempt.bridges == []
    assert [o.exit_relay for o in sc.p._path_options(peer, NOW)] == [None, None]


def test_the_side_that_did_not_ask_never_moves_a_session_it_was_offered() -> None:
    """We have the larger key: the peer asked, through its home (S, 5 ms
    from it) and ours (H, 400 ms from it): A-S-H-B. H offers us the session
    as any other (nothing says a leg is behind it), so to us it looks like
    H alone at 12 + 400 = 412 ms against S alone at 162 + 5 = 167. Moving
    to S asked the relay that holds the pair's session already (its entry
    side), which refuses a request from the side at the other relay
    (legs.py): a request for nothing every SWITCH_HOLD_S. The peer, which
    asked, weighs and moves it."""
    sc = scene()
    peer = PublicKey(bytes(32))  # the smaller key: it asks, we accept
    sc.p._places[peer] = (
        Place(PeerLocation(sc.s, ("203.0.113.3", 51821)), 5, False),
        Place(PeerLocation(sc.home, ("203.0.113.1", 51821)), 400, True),
    )
    link = sc.home_link
    link.session_of[peer] = bytes(8)
    sc.p.route_relay[peer] = sc.home
    sc.p._route_incoming[peer] = (True, NOW)
    sc.p._reconsider(peer, sc.home, NOW)
    assert peer not in sc.p._attempts
    # a session we asked for ourselves is over one relay: ours to weigh
    sc.p._route_incoming[peer] = (False, NOW)
    sc.p._reconsider(peer, sc.home, NOW)
    assert sc.p._attempts[peer].current == sc.s


def test_a_private_path_that_failed_costs_plain_two_relay_paths_nothing() -> None:
    """A covered peer's request through our home and X failed (plan_private.py
    chose that pair, for its own reasons: the exit's sealed requests, the
    peer's own rules). It was counted against the pair as if our two-relay
    request had failed, so every other peer's A-H-X-B cost 250 ms more for
    5 minutes; and pairs a private path enters elsewhere than at our home,
    never weighed here, stayed in the table for good."""
    sc = scene()
    sc.p.config = replace(sc.p.config, private=PrivacyConfig(all_peers=True))
    attempt = sc.attempt()
    attempt.current, attempt.via = sc.home, sc.x
    sc.p._attempts[sc.peer] = attempt
    sc.p._connect_next(attempt, NOW)  # (the private request through X failed)
    assert sc.p._leg_failures == {}
    assert sc.p._leg_penalty(sc.home, sc.x, NOW) == 0.0


def test_a_session_the_peer_asked_for_at_our_home_is_over_one_relay() -> None:
    """Both agents ask at once (a path ended): we through our home H and X,
    the peer at H alone. H holds one session per pair: ours joins the
    peer's (answered with its id) or the peer's offer comes first. Either
    way the session is H alone, yet the link kept X as the second relay:
    status said two relays, and the measuring rounds costed it as H and X."""
    for answer_first in (False, True):
        sc = scene()
        link = sc.home_link
        link.request_session(sc.peer, NOW, sc.x)  # ours, through X, is out
        sid = bytes(range(8))
        if answer_first:  # H joined our request to the peer's session
            link._bind(sc.peer, sid, incoming=False, port=0)
        link._on_session_offer(SessionOffer(sid, sc.peer, 0), NOW)  # the peer's
        sc.p._drain(sc.home, link, NOW)
        assert sc.p.route_relay[sc.peer] == sc.home
        assert sc.p.exit_relay(sc.peer) is None, answer_first
