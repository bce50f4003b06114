"""The planner's private-path rules (client/plan_private.py) with real relay
cores in memory, on a fake clock (test_plan.py's World): the entry relay is
never the peer's relay nor one that was asked where the peer is; the home
being the peer's relay means entering by another relay, registered
unlisted; no such relay means no relayed path at all, and why; a lookup
asks about every covered peer at once."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_plan import WALL0, Addr, World
from wgrelay.client.events import PeerRelayed, PeerRelayFailed
from wgrelay.client.link import Role
from wgrelay.client.link_private import PrivateLink
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.client.plan_private import MAX_COVER
from wgrelay.client.privacy import PrivacyConfig
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.core import RelayCore
from wgrelay.relay.sessions import Listing

PRIVATE = PrivacyConfig(all_peers=True)


class Federated(World):
    """Relays that announce where they are (so they can federate)."""

    def relay(self, n: int, delay_s: float) -> tuple[PublicKey, Addr]:
        key, addr = super().relay(n, delay_s)
        old = self.relays[addr]
        self.relays[addr] = RelayCore(
            old.identity,
            old.config,
            OpenPolicy(),
            now=self.now,
            wall=WALL0 + self.now,
            announce_endpoints=(addr,),
        )
        return key, addr


def _federate(w: World, relays: list[tuple[PublicKey, Addr]]) -> None:
    """Every relay lists every other for legs and knows it (bootstrap)."""
    keys = frozenset(k.raw for k, _ in relays)
    for key, addr in relays:
        core = w.relays[addr]
        core.reconfigure(config=replace(core.config, leg_relays=keys - {key.raw}))
        for other, other_addr in relays:
            if other != key:
                core.add_bootstrap(other, other_addr)

    def all_known() -> bool:
        return all(r.get_stats().relays_live >= len(relays) - 1 for r in w.relays.values())

    w.run_until(all_known)


def _private_peer(w: World, n: int, relays: list[tuple[PublicKey, Addr]]) -> RelayPlanner:
    p = w.peer(n, relays)
    p.config = PlanConfig(private=PRIVATE)
    return p


def test_home_at_the_peers_relay_enters_by_another_relay_unlisted() -> None:
    w = Federated()
    r1, r2, r3 = w.relay(1, 0.020), w.relay(2, 0.005), w.relay(3, 0.010)
    _federate(w, [r1, r2, r3])
    a = _private_peer(w, 1, [r1, r2, r3])
    b = w.peer(2, [r2])
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home == r2[0] and b.home == r2[0])
    b_key = b.private_key.public_key()
    a.relay_peer(b_key, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed)))
    (ev,) = w.saw(a, PeerRelayed)
    lookup = next(iter(a.asked_about[b_key]))
    assert lookup != r2[0]  # never our home
    assert ev.relay not in (r2[0], lookup)  # entry: neither b's relay nor the one asked
    assert w.saw(b, PeerRelayed)[0].incoming
    entry_core = next(w.relays[addr] for key, addr in (r1, r2, r3) if key == ev.relay)
    link = a.link(ev.relay)
    assert link is not None
    assert link.role == Role.UNLISTED
    reg = entry_core.table.regs[a.private_key.public_key().raw]
    assert reg.listing is Listing.UNLISTED  # no location record points lookups there
    assert entry_core.leg_stats()["private_open"] == 1
    # every link of ours refuses a plain request for b by itself
    for key in (r1[0], r2[0], r3[0]):
        lk = a.link(key)
        assert lk is None or (isinstance(lk, PrivateLink) and lk.covers(b_key))


def test_no_two_relay_path_means_no_relayed_path_and_says_why() -> None:
    """Two relays: a's home is b's relay, the other is where a asked: no
    entry relay is left. Fail closed, never a plain request."""
    w = Federated()
    r1, r2 = w.relay(1, 0.020), w.relay(2, 0.005)
    _federate(w, [r1, r2])
    a = _private_peer(w, 1, [r1, r2])
    b = w.peer(2, [r2])
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home == r2[0] and b.home == r2[0])
    b_key = b.private_key.public_key()
    a.relay_peer(b_key, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayFailed)))
    (ev,) = w.saw(a, PeerRelayFailed)
    assert ev.error.startswith("private: no two-relay path")
    # (b's places are r2, a's home, and perhaps r1, its standby: the relay
    # that was asked)
    assert "no other relay to enter by" in ev.error or "was asked where it is" in ev.error
    assert a.private_blocked[b_key] == ev.error
    # nothing was asked for b at either relay
    for core in w.relays.values():
        assert not core.table.pending
        assert not core.sessions


def test_one_lookup_asks_about_every_covered_peer_in_one_order() -> None:
    w = Federated()
    r1, r2 = w.relay(1, 0.005), w.relay(2, 0.010)
    _federate(w, [r1, r2])
    others = [PrivateKey.generate().public_key() for _ in range(3)]
    a = w.peer(1, [r1, r2])
    a.config = PlanConfig(private=PrivacyConfig(all_peers=True, peers=frozenset(others)))
    a.start(w.now)
    w.run_until(lambda: a.home == r1[0])
    a.relay_peer(others[1], w.now)
    assert a.cover(others[1]) == a.cover(others[2]) == sorted(others, key=lambda k: k.raw)
    w.run_until(lambda: bool(w.saw(a, PeerRelayFailed)))  # nobody is anywhere
    for k in others:
        assert a.asked_about[k] == {r2[0]}  # the one relay that is not our home
    assert "its relay is not known" in w.saw(a, PeerRelayFailed)[0].error


def test_more_covered_peers_than_one_lookup_asks_about_share_fixed_groups() -> None:
    """Review finding: with more than MAX_COVER covered peers, a lookup asked
    about the wanted peer and the 15 lowest others, so for any peer above
    them the set was its own (the lowest 15 and it): the lookup relay could
    tell which peer was wanted. Peers now go in fixed groups, in key order,
    and a lookup asks about the wanted peer's whole group."""
    w = Federated()
    r1 = w.relay(1, 0.005)
    covered = [PrivateKey.generate().public_key() for _ in range(2 * MAX_COVER + 5)]
    a = w.peer(1, [r1])
    a.config = PlanConfig(private=PrivacyConfig(all_peers=True, peers=frozenset(covered)))
    groups = {tuple(a.cover(p)) for p in covered}
    assert len(groups) == 3  # 16, 16 and 5: each peer in exactly one
    assert sorted(k.raw for g in groups for k in g) == sorted(k.raw for k in covered)
    for p in covered:
        group = a.cover(p)
        assert p in group
        assert len(group) <= MAX_COVER
        assert all(a.cover(q) == group for q in group)  # the same set for each of them
    # a peer not named (--private covers it) is asked about with a group too
    stranger = PrivateKey.generate().public_key()
    assert stranger in a.cover(stranger)
    assert len(a.cover(stranger)) <= MAX_COVER
