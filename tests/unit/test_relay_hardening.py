"""The relay must never become a traffic cannon (issue 8), reproduced in memory.

Each test plays an attacker the way the review did against 127.0.0.1 with
forged source addresses, but against the sans-I/O core, where forging a source
is passing another address and time is a number: every assertion is exact.
Attackers own keys of their own; what they cannot do is receive at an address
they forge.
"""

from __future__ import annotations

import random

import pytest

from tests.helpers import wg_packet
from wgrelay.client.events import LinkRegistered, SessionEstablished
from wgrelay.client.link import LinkConfig, RelayLink
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import Capability, MsgType
from wgrelay.proto.cookie import COOKIE_REPLY_LEN, decode_cookie_reply
from wgrelay.proto.data import data_header
from wgrelay.proto.federation import Gossip
from wgrelay.proto.messages import DiscoveryQuery
from wgrelay.relay.channels import RelayChannel
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.stats import DropReason
from wgrelay.testkit import WALL0, Client, CoreNet, registered

Addr = tuple[object, ...]
VICTIM = ("203.0.113.99", 5353)
"""A third party that never sent the relay a byte."""


def deliver(net: CoreNet, data: bytes, src: Addr) -> list[tuple[bytes, Addr]]:
    """One datagram into the relay from ``src``; everything the relay sends."""
    net.relay.receive(data, src, net.clock.now)
    return net.relay.datagrams_to_send()


def only_cookies_to(out: list[tuple[bytes, Addr]], dst: Addr, request_len: int) -> int:
    """Everything sent to ``dst`` is a cookie reply no larger than the request."""
    sent = [d for d, a in out if a == dst]
    for d in sent:
        assert d[0] == MsgType.COOKIE_REPLY, f"{MsgType(d[0]).name} sent to an unproven address"
        assert len(d) == COOKIE_REPLY_LEN <= request_len
    return len(sent)


def session_between(net: CoreNet, a: Client, b: Client) -> bytes:
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    sid = a.link.session_of[b.pub]
    assert b.link.session_of[a.pub] == sid
    return sid


# ---------------------------------------------------------------- finding 1


def test_forged_heartbeat_cannot_point_a_session_at_a_third_party() -> None:
    """Two keys of the attacker's own and a session between them; then a
    heartbeat of one of them 'from' the victim. On main the registration and
    the session moved there and the relay streamed the other key's data to
    the victim."""
    net = CoreNet()
    k1, k2 = net.client(), net.client()
    registered(net, k1, k2)
    session_between(net, k1, k2)
    k2.link.heartbeat_now(net.clock.now)
    (hb,) = k2.link.datagrams_to_send()
    challenged = net.relay.get_stats().drops["unproven_address"]
    out = deliver(net, hb, VICTIM)
    assert only_cookies_to(out, VICTIM, len(hb)) == 1
    assert net.relay.registered_addr(k2.pub) == k2.addr  # not moved
    frame = data_header(k1.link.session_of[k2.pub]) + wg_packet(b"payload")
    assert net.relay.forward_data(frame, k1.addr, net.clock.now) == k2.addr
    assert net.relay.get_stats().drops["unproven_address"] == challenged + 1


def test_a_key_registered_entirely_from_a_forged_address_gets_nothing_but_cookies() -> None:
    """On main a fresh key registered and opened a session from the victim's
    address and 100/100 frames reached the victim."""
    net = CoreNet()
    target = net.client()
    registered(net, target)
    attacker = net.client()
    attacker.link.connect(net.clock.now)
    (reg,) = attacker.link.datagrams_to_send()
    assert only_cookies_to(deliver(net, reg, VICTIM), VICTIM, len(reg)) == 1
    assert not net.relay.is_registered(attacker.pub)
    attacker.link.request_session(target.pub, net.clock.now)
    (req,) = attacker.link.datagrams_to_send()
    out = deliver(net, req, VICTIM)
    assert only_cookies_to(out, VICTIM, len(req)) == 1
    assert [a for _, a in out] == [VICTIM]  # no offer to the target either
    assert net.relay.get_stats().sessions_pending == 0


def test_a_captured_cookie_does_not_help_another_key_or_address() -> None:
    net = CoreNet()
    a = net.client()
    registered(net, a)
    cookie = a.link._cookie
    assert cookie is not None
    mallory = net.client()
    mallory.link._cookie = cookie  # a's cookie, stolen
    mallory.link.connect(net.clock.now)
    (reg,) = mallory.link.datagrams_to_send()
    assert only_cookies_to(deliver(net, reg, a.addr), a.addr, len(reg)) == 1
    assert not net.relay.is_registered(mallory.pub)


@pytest.mark.parametrize(
    "addr",
    [
        ("0.0.0.0", 4000),
        ("224.0.0.251", 5353),
        ("255.255.255.255", 4000),
        ("198.51.100.9", 0),
        ("::", 4000),
        ("ff02::1", 4000, 0, 0),
        ("203.0.113.10", 51821),  # the relay itself
    ],
)
def test_the_relay_never_registers_a_peer_at_an_address_it_must_not_send_to(addr: Addr) -> None:
    """Even with a valid cookie for it (as if the attacker could receive there):
    pointed at itself, a session forwarded 1.1 million frames in 10 s on main."""
    net = CoreNet()
    net.relay.set_own_addresses([("203.0.113.10", 51821)])
    attacker = net.client()
    where = (str(addr[0]), int(str(addr[1])))
    attacker.link._cookie = (net.relay._admission.cookies.make(attacker.pub.raw, where, 0.0), 0.0)
    attacker.link.connect(net.clock.now)
    (reg,) = attacker.link.datagrams_to_send()
    out = deliver(net, reg, addr)
    assert out == []
    assert not net.relay.is_registered(attacker.pub)
    assert net.relay.get_stats().drops["bad_address"] == 1


def test_two_peers_behind_one_address_get_no_session_that_loops() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    b.addr = a.addr  # two keys, one address: the relay could not tell them apart
    registered(net, a)
    b.link.connect(net.clock.now)
    net.run()
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    assert b.pub not in a.link.session_of
    assert net.relay.get_stats().sessions_opened == 0


def test_a_delayed_heartbeat_cannot_move_a_peer_back() -> None:
    """On main an out-of-order replayed heartbeat moved A's sessions to the
    attacker for a heartbeat interval."""
    net = CoreNet()
    a, b = net.client(), net.client()
    registered(net, a, b)
    sid = session_between(net, a, b)
    a.link.heartbeat_now(net.clock.now)
    (old_hb,) = a.link.datagrams_to_send()  # captured and held back by the attacker
    net.clock.now += 0.5
    a.addr = ("198.51.100.1", 41999)  # a's NAT rebinds; its next heartbeat moves it
    a.link._next_heartbeat = net.clock.now
    a.link.handle_timer(net.clock.now)
    net.run()
    assert net.relay.registered_addr(a.pub) == a.addr
    out = deliver(net, old_hb, ("198.51.100.1", 40000))  # the old address, old message
    # nothing but (at most) a notice to the address that proved itself, saying
    # which timestamp to continue above: no registration, no session moved
    assert [MsgType(d[0]) for d, _ in out] in ([], [MsgType.ERROR])
    assert net.relay.registered_addr(a.pub) == a.addr
    assert net.relay.sessions[sid].a_addr == a.addr
    assert net.relay.get_stats().drops["stale_rebind"] == 1


def test_nat_rebinding_moves_the_session_after_one_cookie_round_trip() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    registered(net, a, b)
    sid = session_between(net, a, b)
    b.addr = ("198.51.100.1", 45000)
    b.link.heartbeat_now(net.clock.now)
    net.run()
    assert net.relay.registered_addr(b.pub) == b.addr
    assert net.relay.sessions[sid].b_addr == b.addr


# ---------------------------------------------------------------- finding 2


def _every_client_message(link: RelayLink, peer: PublicKey, now: float) -> list[bytes]:
    """One of every message a peer sends a relay (and both query shapes)."""
    link.connect(now)
    link.heartbeat_now(now)
    link.request_session(peer, now)
    link.ping(now)
    link.query(now, want_relays=True)
    link.query(now, locate=peer, want_relays=True)
    link._send(DiscoveryQuery(7, 0, 0, 0, "", None), now)  # the smallest query
    link._hb_seq = 1
    link.state = link.state.REGISTERED
    link._next_heartbeat = now
    link.handle_timer(now)
    return link.datagrams_to_send()


@pytest.mark.parametrize("registered_elsewhere", [False, True])
def test_no_reply_to_an_unproven_address_exceeds_its_request(registered_elsewhere: bool) -> None:
    """Every message type a peer can send, from a key of the attacker's own,
    with the victim's address as source, on an --open relay with announcements
    (on main a 94-byte DISCOVERY_QUERY drew up to 397 bytes)."""
    net = CoreNet()
    net.relay.announce_endpoints = (("203.0.113.10", 51821),)
    target = net.client()
    attacker = net.client()
    registered(net, target)
    if registered_elsewhere:
        registered(net, attacker)
    sent = _every_client_message(attacker.link, target.pub, net.clock.now)
    types = {MsgType.HEARTBEAT, MsgType.CONNECTION_REQUEST, MsgType.PING, MsgType.DISCOVERY_QUERY}
    if not registered_elsewhere:
        types.add(MsgType.REGISTER)
    assert {d[0] for d in sent} >= types
    total_in = total_out = 0
    for d in sent:
        out = deliver(net, d, VICTIM)
        only_cookies_to(out, VICTIM, len(d))
        total_in += len(d)
        total_out += sum(len(r) for r, a in out if a == VICTIM)
    assert total_out < total_in / 3
    assert net.relay.get_stats().largest_unauthenticated_reply_ratio < 0.33


# ---------------------------------------------------------------- finding 4


def test_junk_from_the_victims_own_ip_does_not_cost_it_its_registration() -> None:
    """5,000 junk control packets/s from other ports of the victim's public IP
    (CGNAT, an office NAT): on main the victim lost its registration in 14 s."""
    config = RelayConfig(registration_ttl_s=10, heartbeat_interval_s=2)
    net = CoreNet(config)
    a, b = net.client(), net.client()
    registered(net, a, b)
    sid = session_between(net, a, b)
    rng = random.Random(4)
    junk_types = [MsgType.REGISTER, MsgType.HEARTBEAT, MsgType.PING]
    for tick in range(30 * 50):  # 30 s in steps of 20 ms, 100 junk datagrams each
        for _ in range(100):
            junk = bytes((rng.choice(junk_types), 1, 0)) + rng.randbytes(rng.randint(80, 200))
            net.relay.receive(junk, (a.addr[0], 50000 + rng.randrange(1000)), net.clock.now)
        net.relay.datagrams_to_send()
        if tick % 5 == 0:
            frame = data_header(sid) + wg_packet(b"%d" % tick)
            assert net.relay.forward_data(frame, a.addr, net.clock.now) == b.addr
        net.advance(0.02)
    assert net.relay.is_registered(a.pub)
    assert net.relay.get_stats().drops["rate_limited_ip"] > 100_000


def test_ipv6_sources_share_a_budget_per_64() -> None:
    from wgrelay.relay.admission import source_group

    assert source_group(("2001:db8:1:2::1", 1, 0, 0)) == source_group(
        ("2001:db8:1:2:ffff::9", 7, 0, 0)
    )
    assert source_group(("2001:db8:1:2::1", 1, 0, 0)) != source_group(("2001:db8:1:3::1", 1, 0, 0))
    assert source_group(("198.51.100.1", 1)) == "198.51.100.1"


# ---------------------------------------------------------------- finding 5


def test_tiny_frames_are_not_forwarded_and_small_ones_pay_per_packet() -> None:
    """On main one session of 11-byte frames under the byte cap drove the
    relay to 92 % CPU: 1000 KB/s / 11 B is 90,000 frames a second."""
    net = CoreNet(RelayConfig(max_bandwidth_kbps=100))
    a, b = net.client(), net.client()
    registered(net, a, b)
    sid = session_between(net, a, b)
    header = data_header(sid)
    assert net.relay.forward_data(header + b"\x04", a.addr, net.clock.now) is None
    assert net.relay.get_stats().drops["not_wireguard"] == 1
    assert net.relay.forward_data(header + b"\x07" + bytes(40), a.addr, 0.0) is None
    smallest = header + wg_packet()  # a WireGuard keepalive: 32 bytes
    forwarded = 0
    for i in range(100_000):  # 10 s of 10,000 frames a second
        if net.relay.forward_data(smallest, a.addr, i / 10_000) is not None:
            forwarded += 1
    budget = 100_000 * 10 + RelayConfig(max_bandwidth_kbps=100).bandwidth_burst_bytes
    assert forwarded <= budget / (len(smallest) + 64) + 1
    assert forwarded >= 0.9 * 100_000 * 10 / (len(smallest) + 64)


# ---------------------------------------------------------------- finding 6


def test_one_source_cannot_fill_the_registration_table() -> None:
    config = RelayConfig(max_registrations=10, max_registrations_per_source=4)
    net = CoreNet(config)
    flooders = [net.client() for _ in range(6)]  # all on 198.51.100.1
    for f in flooders:
        f.link.connect(net.clock.now)
    net.run()
    assert sum(net.relay.is_registered(f.pub) for f in flooders) == 4
    assert net.relay.get_stats().quota_hits["registrations_per_source"] == 2


def test_a_full_table_evicts_an_idle_entry_of_the_biggest_source_for_a_newcomer() -> None:
    config = RelayConfig(max_registrations=6, max_registrations_per_source=6)
    net = CoreNet(config)
    flooders = [net.client() for _ in range(6)]
    for f in flooders:
        f.link.connect(net.clock.now)
    net.run()
    assert len(net.relay.table.regs) == 6
    newcomer = net.client()
    newcomer.addr = ("192.0.2.7", 40000)
    registered(net, newcomer)
    assert net.relay.is_registered(newcomer.pub)
    assert len(net.relay.table.regs) == 6
    assert net.relay.get_stats().quota_hits["evicted"] == 1
    # the flooder's source is still the biggest: a second newcomer also gets in
    other = net.client()
    other.addr = ("192.0.2.8", 40000)
    registered(net, other)
    assert net.relay.is_registered(other.pub)


def test_offers_a_target_has_not_accepted_do_not_use_up_its_share() -> None:
    """On main strangers' pending offers filled a target's per-peer cap."""
    config = RelayConfig(max_sessions_per_peer=2, max_pending_per_peer=8)
    net = CoreNet(config)
    target = net.client(accept=False)  # rejects strangers... later
    target.link._accept_offer = lambda _p: False
    strangers = [net.client() for _ in range(5)]
    friend = net.client()
    registered(net, target, friend, *strangers)
    for s in strangers:  # offers go out; hold the target's answers back
        s.link.request_session(target.pub, net.clock.now)
        for d in s.link.datagrams_to_send():
            deliver(net, d, s.addr)
    assert net.relay.get_stats().sessions_pending == 5
    target.link._accept_offer = lambda _p: True
    friend.link.request_session(target.pub, net.clock.now)
    for d in friend.link.datagrams_to_send():
        deliver(net, d, friend.addr)
    assert net.relay.get_stats().quota_hits["sessions_per_peer"] == 0


def test_a_peer_has_a_bounded_number_of_offers_outstanding() -> None:
    config = RelayConfig(max_pending_per_peer=3)
    net = CoreNet(config)
    asker = net.client()
    targets = [net.client() for _ in range(5)]
    registered(net, asker, *targets)
    for t in targets:
        asker.link.request_session(t.pub, net.clock.now)
    for d in asker.link.datagrams_to_send():
        deliver(net, d, asker.addr)
    assert net.relay.get_stats().sessions_pending == 3
    assert net.relay.get_stats().quota_hits["pending_per_peer"] == 2


def test_one_source_cannot_fill_max_connections() -> None:
    config = RelayConfig(max_connections=10, max_sessions_per_source=4)
    net = CoreNet(config)
    peers = [net.client() for _ in range(10)]
    registered(net, *peers)
    for p, q in zip(peers[::2], peers[1::2], strict=True):
        p.link.request_session(q.pub, net.clock.now)
    net.run()
    assert net.relay.get_stats().sessions_active == 4
    assert net.relay.get_stats().quota_hits["sessions_per_source"] == 1


# ---------------------------------------------------------------- finding 7


def test_a_restart_hidden_by_a_replayed_register_is_noticed_by_the_epoch() -> None:
    """On main: crash, restart, the attacker replays A's recent REGISTER, A's
    heartbeats are answered 'ok' and its sessions are never rebuilt."""
    net = CoreNet()
    a, b = net.client(), net.client()
    registered(net, a, b)
    sid = session_between(net, a, b)
    register = next(d for d in reversed(a.sent) if d[0] == MsgType.REGISTER)

    # the relay crashes and comes back with the same key: new epoch, empty tables
    def restarted() -> RelayCore:
        return RelayCore(net.ident, RelayConfig(), net.policy, now=net.clock.now, wall=WALL0)

    relay = restarted()
    relay.receive(register, a.addr, net.clock.now)  # the attacker replays it...
    assert not relay.is_registered(a.pub)  # ...its cookie died with the old relay
    # if the cookie secret had survived (the worst case), the replay registers a:
    old, net.relay = net.relay, restarted()
    net.relay._admission.cookies = old._admission.cookies
    net.relay.receive(register, a.addr, net.clock.now)
    net.relay.datagrams_to_send()
    assert net.relay.is_registered(a.pub)  # hidden: a is registered again...
    a.events.clear()
    net.advance(a.link.heartbeat_s)  # ...but its next heartbeat ack has a new epoch
    net.advance(0.1)
    assert any(isinstance(e, LinkRegistered) for e in a.events)
    new = [e for e in a.events if isinstance(e, SessionEstablished)]
    assert new
    assert new[0].session_id != sid


# ---------------------------------------------------------------- finding 8


def test_a_reply_the_wire_cannot_carry_costs_one_message_not_the_relay() -> None:
    """--idle-timeout 65536 made every ConnectionResponse raise on main, which
    killed housekeeping. The CLI now refuses it; the core survives it anyway."""
    net = CoreNet()
    object.__setattr__(net.relay.config, "session_idle_timeout_s", 65536)
    a, b = net.client(), net.client()
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    assert net.relay.get_stats().drops["internal_error"] >= 1
    net.advance(1.0)  # housekeeping still runs
    assert net.relay.next_timer() > net.clock.now
    a.link.ping(net.clock.now)
    net.run()
    assert a.link.rtt_s is not None


# ---------------------------------------------------------------- finding 12


def test_a_peer_whose_clock_stepped_back_is_told_and_recovers() -> None:
    """The relay accepted timestamps from a's future (its clock ran 30 s ahead
    for a while); a restarts with a correct clock. On main it stayed locked
    out, silently, until real time caught up."""
    net = CoreNet()
    a = net.client()
    a.link._wall_offset += 30.0
    registered(net, a)
    for _ in range(20):  # enough that the relay's window holds only future times
        a.link.ping(net.clock.now)
        net.run()
    restarted = RelayLink(a.key, net.ident.public, a.link.config, net.clock.now, WALL0)
    a.link = restarted
    a.events.clear()
    net.advance(1.0)
    a.link.connect(net.clock.now)
    net.run()
    assert any(isinstance(e, LinkRegistered) for e in a.events)
    assert net.relay.get_stats().drops["replayed"] >= 1


def test_a_peer_whose_clock_is_far_off_uses_the_relays_clock() -> None:
    net = CoreNet()
    a = net.client()
    a.link._wall_offset -= 600.0  # ten minutes slow: outside the 120 s window
    a.link.connect(net.clock.now)
    net.run()
    assert any(isinstance(e, LinkRegistered) for e in a.events)
    assert abs(a.link.clock_offset_s - 600.0) < 1.0
    assert net.relay.get_stats().drops["stale_timestamp"] >= 1


def test_random_session_close_and_answer_from_strangers_change_nothing() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    mallory = net.client()
    registered(net, a, b, mallory)
    sid = session_between(net, a, b)
    mallory.link.sessions[sid] = a.pub  # it guessed the id (it cannot: 64 random bits)
    mallory.link.session_of[a.pub] = sid
    mallory.link.close_session(a.pub, net.clock.now)
    net.run()
    assert sid in net.relay.sessions
    assert net.relay.get_stats().drops["unknown_session"] == 1


# ---------------------------------------------------------------- federation


def test_a_stranger_that_introduces_itself_as_a_relay_gets_no_registration() -> None:
    """Found in the review of issue 10: anyone can sign an announcement, so
    being a relay of the federation must open relay-to-relay speech only. An
    outsider the access policy refuses introduced itself with one GOSSIP and
    then registered as a peer (filling the table, receiving offers)."""
    net = CoreNet()
    member = net.client()
    registered(net, member)
    outsider = RelayIdentity.generate()
    net.policy.denied.add(outsider.x25519_public)
    at = ("198.51.100.77", 40000)
    info = RelayNodeInfo(outsider.public, (at,), "", int(Capability.GOSSIP), 0, 100)
    ann = encode_announcement(info, int(net.clock.wall() * 1000), 600, outsider)
    channel = RelayChannel(outsider, net.ident.public, ("192.0.2.1", 51821))
    out = deliver(net, channel.seal(Gossip((ann,)), 0.0, net.clock.wall()), at)
    for data, _ in out:
        if data[0] == MsgType.COOKIE_REPLY:
            again = channel.on_cookie(decode_cookie_reply(data), 0.0, net.clock.wall())
            assert again is not None
            deliver(net, again, at)
    assert net.relay.federation.directory.by_x25519(outsider.x25519_public) is not None

    refused = net.relay.stats.drops[DropReason.NOT_ALLOWED]
    as_peer = RelayLink(
        PrivateKey(outsider.x25519_private),
        net.ident.public,
        LinkConfig(),
        now=0.0,
        wall=net.clock.wall(),
    )
    as_peer.connect(0.0)
    for _ in range(3):  # the REGISTER, then again with the cookie
        for data in as_peer.datagrams_to_send():
            for reply, dst in deliver(net, data, at):
                if dst == at:
                    as_peer.receive(reply, 0.0)
    assert not net.relay.is_registered(PublicKey(outsider.x25519_public))
    assert net.relay.stats.drops[DropReason.NOT_ALLOWED] > refused
