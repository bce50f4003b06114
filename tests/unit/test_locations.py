"""Location records at their holders, and placing ours (relay/locations.py).

A ``LocationBook`` on a fake clock with a directory of made-up relays; what
it sends is captured instead of sealed. The last test runs the production
``RelayCore`` so that the federation's timer is what triggers placement.
"""

from __future__ import annotations

from collections import Counter

import pytest

from wgrelay.discovery.directory import RelayDirectory
from wgrelay.discovery.rendezvous import holders
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.constants import MAX_CONTROL_SIZE, MAX_RECORDS_PER_MESSAGE
from wgrelay.proto.envelope import ChannelKeys, seal_control
from wgrelay.proto.federation import LocationStore
from wgrelay.proto.location import decode_location, encode_location
from wgrelay.proto.messages import Body
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.locations import (
    MAX_RECORDS_PER_PEER,
    QUOTA_FLOOR,
    RECORDS_PER_STORE,
    LocationBook,
)

WALL0 = 1_700_000_000.0
TTL_S = 120


def wall_ms(now: float) -> int:
    return int((WALL0 + now) * 1000)


def _announcement(ident: RelayIdentity, n: int, now: float = 0.0) -> bytes:
    info = RelayNodeInfo(key=ident.public, endpoints=((f"203.0.{n // 250}.{n % 250 + 1}", 51821),))
    return encode_announcement(info, wall_ms(now), 600, ident)


class Bench:
    """One relay's book over ``n`` relays it knows; what it sends is kept."""

    def __init__(self, n: int = 2, max_records: int = 200_000) -> None:
        self.identity = RelayIdentity.generate()
        self.directory = RelayDirectory(self.identity.public)
        self.directory.set_own(decode_announcement(_announcement(self.identity, 0)))
        self.sent: list[tuple[PublicKey, Body]] = []
        self.counters: Counter[str] = Counter()
        self.others = [self.join(i + 1) for i in range(n)]
        self.book = LocationBook(
            self.identity,
            self.directory,
            self._send,
            wall_ms,
            lambda: 1,
            self._count,
            replicas=3,
            ttl_s=TTL_S,
            locate_timeout_s=1.0,
            max_records=max_records,
        )

    def _count(self, what: str) -> None:
        self.counters[what] += 1

    def _send(self, key: PublicKey, body: Body, now: float) -> bool:
        self.sent.append((key, body))
        return True

    def join(self, n: int, now: float = 0.0) -> RelayIdentity:
        ident = RelayIdentity.generate()
        ann = decode_announcement(_announcement(ident, n, now))
        self.directory.learn(ann, now, wall_ms(now))
        return ident

    def records_sent(self) -> list[tuple[PublicKey, bytes]]:
        return [
            (key, raw)
            for key, body in self.sent
            if isinstance(body, LocationStore)
            for raw in body.records
        ]


def record(
    peer: PublicKey, signer: RelayIdentity, now: float, ahead_s: float = 0.0, standby: bool = False
) -> bytes:
    return encode_location(peer, wall_ms(now + ahead_s), TTL_S, signer, standby)


def offered(b: Bench, peer: PublicKey, now: float) -> list[PublicKey]:
    """The two places a DISCOVERY_RESPONSE carries (core.py takes the first two)."""
    return [f.home for f in b.book.held(peer, now) if f.record is not None][:2]


# ---------------------------------------------------------------- one record per signer


def test_a_relay_cannot_hide_a_peer_by_signing_a_home_record_dated_ahead() -> None:
    """Review r3: a malicious relay's "home" record dated 119 s ahead used to
    replace the genuine home's, whose refreshes were then refused."""
    b = Bench()
    home, evil = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, home, 0.0), 0.0)
    assert b.book.hold(record(peer, evil, 0.0, ahead_s=119.0), 0.0)
    for t in (40.0, 80.0, 120.0, 160.0):
        assert b.book.hold(record(peer, home, t), t), "the home's refresh is taken"
        assert evil.public in offered(b, peer, t) or t >= 120.0
        assert home.public in offered(b, peer, t)
        if t < 120.0:  # dated ahead, it ranks as fresh as its arrival, no fresher
            assert offered(b, peer, t)[0] == home.public
    assert "location_not_newer" not in b.counters


def test_a_record_dated_ahead_lives_its_ttl_from_arrival_not_longer() -> None:
    b = Bench()
    _, evil = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, evil, 0.0, ahead_s=119.0), 0.0)
    assert b.book.held(peer, TTL_S - 1.0)
    assert not b.book.held(peer, TTL_S + 1.0)  # not at 119 + 120 s
    b.book.expire(wall_ms(TTL_S + 1.0))
    assert b.book.count() == 0


def test_each_relay_keeps_its_own_newest_record_and_its_role() -> None:
    b = Bench()
    home, standby = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, home, 0.0), 0.0)
    assert b.book.hold(record(peer, standby, 0.0, standby=True), 0.0)
    assert not b.book.hold(record(peer, home, 0.0), 0.0)  # a replay
    assert b.counters["location_not_newer"] == 1
    # the standby becomes the peer's home: its record changes role in place
    assert b.book.hold(record(peer, standby, 1.0), 1.0)
    assert b.book.count() == 2
    found = b.book.held(peer, 1.0)
    assert [(f.home, f.standby) for f in found] == [(standby.public, False), (home.public, False)]


def test_two_relays_lying_together_still_leave_the_peers_home_offered() -> None:
    """Two relays refresh false home claims more often than the home: the
    freshest claim comes first, the one held the longest second."""
    b = Bench(4)
    home, standby, liar1, liar2 = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, home, 0.0), 0.0)
    assert b.book.hold(record(peer, standby, 0.0, standby=True), 0.0)
    assert offered(b, peer, 0.0) == [home.public, standby.public]
    for t in range(1, 200):
        for liar in (liar1, liar2):
            b.book.hold(record(peer, liar, float(t)), float(t))
        if t % 40 == 0:
            assert b.book.hold(record(peer, home, float(t)), float(t))
            assert b.book.hold(record(peer, standby, float(t), standby=True), float(t))
        assert home.public in offered(b, peer, float(t))


def test_a_peer_that_moved_is_offered_at_its_new_home_first() -> None:
    b = Bench(3)
    old, standby, new = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, old, 0.0), 0.0)
    assert b.book.hold(record(peer, standby, 0.0, standby=True), 0.0)
    assert b.book.hold(record(peer, new, 30.0), 30.0)  # old stops refreshing
    assert offered(b, peer, 30.0)[0] == new.public
    assert [f.home for f in b.book.held(peer, 130.0)] == [new.public], "the others expired"


def test_records_per_peer_are_bounded_and_the_longest_held_home_stays() -> None:
    b = Bench(8)
    home, *liars = b.others
    peer = PrivateKey.generate().public_key()
    assert b.book.hold(record(peer, home, 0.0), 0.0)
    for i, liar in enumerate(liars):
        b.book.hold(record(peer, liar, 1.0 + i), 1.0 + i)
    assert b.book.count() == MAX_RECORDS_PER_PEER
    assert home.public in {f.home for f in b.book.held(peer, 10.0)}
    # a newcomer staler than all the others is refused, not stored
    late = b.join(99)
    assert not b.book.hold(record(peer, late, 0.5), 10.0)
    assert b.counters["location_peer_full"] == 1


# ---------------------------------------------------------------- quota per signer


def test_one_relay_cannot_fill_a_holders_store() -> None:
    """Review r10: one relay's made-up peers used to fill the whole store, and
    then genuine records of new peers were refused (location_store_full)."""
    cap = 2_000
    b = Bench(3, max_records=cap)
    home, evil, third = b.others
    quota = b.book.quota()
    assert quota == cap // 2

    def fill(signer: RelayIdentity, n: int) -> int:
        return sum(
            b.book.hold(record(PrivateKey.generate().public_key(), signer, 0.0), 0.0)
            for _ in range(n)
        )

    assert fill(evil, cap) == quota
    assert b.counters["location_quota"] == cap - quota
    assert fill(home, 1) == 1
    assert "location_store_full" not in b.counters
    # the store's own bound stays the last resort
    assert fill(home, quota - 1) == quota - 1
    assert fill(third, 1) == 0
    assert b.counters["location_store_full"] == 1
    assert b.book.count() == cap


@pytest.mark.parametrize(
    ("relays", "quota"),
    [(2, 100_000), (50, 6_000), (120, 2_500), (600, QUOTA_FLOOR)],
)
def test_the_quota_is_the_expected_share_with_headroom_and_a_floor(relays: int, quota: int) -> None:
    """k x 100,000 peers / N relays (ourselves counted), at least 1,000, at
    most half the store."""
    assert Bench(relays - 1).book.quota() == quota


# ---------------------------------------------------------------- placing ours


def _placed_bench(relays: int, peers: int) -> tuple[Bench, list[PublicKey]]:
    b = Bench(relays - 1)
    keys = [PrivateKey.generate().public_key() for _ in range(peers)]
    for p in keys:
        b.book.registered(p, 0.0, False, 20)
    b.book.place_all(40.0)  # a refresh: steady state
    b.sent.clear()
    return b, keys


def test_a_relay_joining_moves_only_the_records_whose_holders_changed() -> None:
    """Review r7: any change of the live set re-signed every record and sent
    it to all k holders (51 relays, 1,000 peers: 2,939 LOCATION_STOREs for 53
    peers that moved)."""
    b, keys = _placed_bench(51, 1_000)
    live = b.directory.live()
    before = {p: set(holders(p, live, 3)) for p in keys}
    raw_before = {p: own.record or b"" for p in keys if (own := b.book.own(p)) is not None}
    newcomer = b.join(200, 41.0)
    b.book.place_moved(42.0)
    after = {p: set(holders(p, b.directory.live(), 3)) for p in keys}
    moved = {p for p in keys if before[p] != after[p]}
    assert moved, "with 1,000 peers some move"
    sent = b.records_sent()
    assert {key for key, _ in sent} == {newcomer.public}, "to the new holder only"
    assert sorted(raw for _, raw in sent) == sorted(raw_before[p] for p in moved), "not re-signed"
    stores = [body for _, body in b.sent if isinstance(body, LocationStore)]
    assert len(stores) == -(-len(moved) // RECORDS_PER_STORE), "batched"
    print(f"a join: {len(moved)} of {len(keys)} peers moved, {len(stores)} LOCATION_STOREs")


def test_a_relay_leaving_moves_its_records_to_the_next_holder_only() -> None:
    b, keys = _placed_bench(20, 300)
    gone = b.others[3].public
    had = [p for p in keys if gone in holders(p, b.directory.live(), 3)]
    b.directory.declare_dead(gone, 50.0)
    b.book.place_moved(50.0)
    live = b.directory.live()
    want: Counter[PublicKey] = Counter()
    for p in had:
        (new,) = set(holders(p, live, 3)) - set(holders(p, [*live, gone], 3))
        want[new] += 1
    got = Counter(key for key, _ in b.records_sent())
    got.pop(b.identity.public, None)  # (held by ourselves: not sent)
    want.pop(b.identity.public, None)
    assert got == want
    b.sent.clear()
    b.book.place_moved(51.0)  # nothing changed since
    assert b.sent == []


def test_a_refresh_batches_records_per_holder_and_fits_a_datagram() -> None:
    b, keys = _placed_bench(10, 100)
    b.book.place_all(80.0)
    per_holder = Counter(key for key, _ in b.records_sent())
    stores = [body for _, body in b.sent if isinstance(body, LocationStore)]
    assert len(stores) == sum(-(-n // RECORDS_PER_STORE) for n in per_holder.values())
    assert sum(per_holder.values()) + b.book.count() == 3 * len(keys)
    assert {decode_location(raw).issued_ms for _, raw in b.records_sent()} == {wall_ms(80.0)}
    # the largest LOCATION_STORE, sealed with a cookie, within the 1,200 B cap
    assert RECORDS_PER_STORE == MAX_RECORDS_PER_MESSAGE == 7
    full = LocationStore(tuple(raw for _, raw in b.records_sent()[:RECORDS_PER_STORE]))
    keys_ = ChannelKeys(rx=bytes(32), tx=bytes(32), from_server=False)
    sealed = seal_control(
        full, sender=bytes(32), keys=keys_, timestamp_us=1, nonce=bytes(24), cookie=bytes(16)
    )
    assert len(sealed) <= MAX_CONTROL_SIZE


def test_a_live_set_change_at_the_relay_sends_only_what_moved() -> None:
    """The federation's timer, end to end: one relay joins a federation of
    51 where this relay lists 1,000 peers."""
    ident = RelayIdentity.generate()
    core = RelayCore(
        ident,
        RelayConfig(),
        OpenPolicy(),
        now=0.0,
        wall=WALL0,
        announce_endpoints=(("203.0.113.250", 51821),),
    )
    fed = core.federation
    core.handle_timer(0.0)
    for i in range(50):
        fed.learn(_announcement(RelayIdentity.generate(), i + 1), 0.0)
    keys = [PrivateKey.generate().public_key() for _ in range(1_000)]
    for p in keys:
        fed.peer_registered(p, 0.1)
    core.handle_timer(fed.config.location_refresh_s + 1.0)
    core.datagrams_to_send()
    fed.counters.clear()
    newcomer = RelayIdentity.generate()
    t = fed.config.location_refresh_s + 2.0
    fed.learn(_announcement(newcomer, 200, t), t)
    core.handle_timer(t + 0.1)
    moved = sum(newcomer.public in holders(p, fed.directory.live(), 3) for p in keys)
    sent = fed.counters.get("sent_LocationStore", 0)
    assert sent == -(-moved // RECORDS_PER_STORE), f"{moved} moved, {sent} LOCATION_STOREs"
