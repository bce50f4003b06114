"""The WireGuard stand-in: handshakes, timers, roaming and NATs, at exact virtual times.

Every host link has 10 ms of delay unless a test says otherwise, so a packet
between two hosts on the internet takes 20 ms.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.sim.simhelpers import Recorder, key
from wgrelay.errors import BackendError
from wgrelay.keys import PublicKey
from wgrelay.sim import EPOCH_S, Host, LinkSpec, NatKind, Simulation, SimWireGuard
from wgrelay.sim.trace import TraceRecord
from wgrelay.sim.wgwire import encode_initiation, mac1_key, tai64n, verify_mac1

LINK = LinkSpec(delay_s=0.010)
KA, KB = key(1), key(2)
PA, PB = KA.public_key(), KB.public_key()


def sends(sim: Simulation, host: Host, size: int | None = None) -> list[TraceRecord]:
    return [
        r
        for r in sim.trace
        if r.kind == "send" and r.at == host.name and (size is None or r.size == size)
    ]


def pair(
    sim: Simulation,
    behind_a: NatKind = NatKind.NONE,
    behind_b: NatKind = NatKind.NONE,
) -> tuple[Host, Host, SimWireGuard, SimWireGuard]:
    a = sim.add_host("a", behind=behind_a, link=LINK, nat_link=LINK)
    b = sim.add_host("b", behind=behind_b, link=LINK, nat_link=LINK)
    return a, b, SimWireGuard(a, "wg0", KA), SimWireGuard(b, "wg0", KB)


def public(host: Host, port: int = 51820) -> tuple[str, int]:
    """Where a peer is reachable if its NAT preserves ports."""
    return (host.nat.public_ip if host.nat else host.address, port)


# ---------------------------------------------------------------- on the internet


def test_handshake_and_data_on_the_internet(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)  # b learns a's endpoint from the initiation
    wa.send_app(PB, 1000)
    sim.run_for(1.0)

    assert [r.size for r in sends(sim, a)] == [148, 1040]
    assert [r.time for r in sends(sim, a)] == pytest.approx([0.0, 0.04])
    assert [(r.time, r.size) for r in sends(sim, b)] == [(0.02, 92)]
    ia, ib = wa.read("wg0").peers[0], wb.read("wg0").peers[0]
    assert ia.latest_handshake == pytest.approx(EPOCH_S + 0.04)  # the response arrived
    assert ib.latest_handshake == pytest.approx(EPOCH_S + 0.06)  # the first data confirmed it
    assert ib.endpoint == (a.address, 51820)
    assert (ia.tx_bytes, ia.rx_bytes) == (148 + 1040, 92)
    assert (ib.rx_bytes, ib.tx_bytes) == (ia.tx_bytes, ia.rx_bytes)
    stats = wb.stats(PA)
    assert (stats.app_packets_received, stats.app_bytes_received) == (1, 1000)
    assert wa.has_session(PB)
    assert wb.has_session(PA)


def test_passive_keepalive_ten_seconds_after_data(sim: Simulation) -> None:
    _, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    wa.send_app(PB, 100)  # arrives at b at 0.06; b has nothing to say back
    sim.run_for(60.0)
    assert [r.time for r in sends(sim, b, size=32)] == pytest.approx([10.06])
    assert wb.stats(PA).keepalives_sent == 1
    assert wa.stats(PB).keepalives_received == 1


def test_persistent_keepalive_every_interval(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    wb.add_peer(PA)
    wa.add_peer(PB, endpoint=(b.address, 51820), keepalive=25)  # starts a handshake at once
    sim.run_for(80.0)
    assert [r.time for r in sends(sim, a, size=148)] == [0.0]
    assert [r.time for r in sends(sim, a, size=32)] == pytest.approx([0.04, 25.04, 50.04, 75.04])
    assert wa.read("wg0").peers[0].persistent_keepalive == 25


def test_ping_through_the_tunnel(sim: Simulation) -> None:
    _, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    first = sim.run(wa.ping(PB))  # handshake, then the ping confirms b's session
    second = sim.run(wa.ping(PB))
    assert first == pytest.approx(0.08)
    assert second == pytest.approx(0.04)
    b.crash()
    started = sim.now()
    assert sim.run(wa.ping(PB, timeout_s=2.0)) is None
    assert sim.now() == pytest.approx(started + 2.0)


def test_handshake_retries_every_rekey_timeout_then_gives_up(sim: Simulation) -> None:
    a = sim.add_host("a", link=LINK)
    nobody = sim.add_host("nobody", link=LINK)  # no WireGuard listening there
    wa = SimWireGuard(a, "wg0", KA)
    wa.add_peer(PB, endpoint=(nobody.address, 51820))
    wa.send_app(PB, 100)
    sim.run_for(150.0)
    # wireguard-go: the first initiation and 19 retries, 5 s apart; give up at 100 s.
    assert [r.time for r in sends(sim, a)] == [5.0 * i for i in range(20)]
    stats = wa.stats(PB)
    assert (stats.initiations_sent, stats.staged_dropped) == (20, 1)
    # New traffic starts the whole sequence again.
    wa.send_app(PB, 100)
    sim.run_for(12.0)
    assert [r.time for r in sends(sim, a)][20:] == [150.0, 155.0, 160.0]


def test_kick_starts_a_handshake_but_not_more_than_one_per_rekey_timeout(
    sim: Simulation,
) -> None:
    a = sim.add_host("a", link=LINK)
    nobody = sim.add_host("nobody", link=LINK)
    wa = SimWireGuard(a, "wg0", KA)
    wa.add_peer(PB, endpoint=(nobody.address, 51820))
    sim.loop.call_at(1.0, wa.set_keepalive, "wg0", PB, 25, True)
    sim.loop.call_at(3.0, wa.set_keepalive, "wg0", PB, 25, True)  # rate-limited
    sim.loop.call_at(4.0, wa.set_keepalive, "wg0", PB, 25)  # unchanged: no keepalive
    sim.run_for(10.0)
    assert [r.time for r in sends(sim, a)] == [1.0, 6.0]


def test_new_handshake_when_data_gets_no_answer_for_15_s(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    assert sim.run(wa.ping(PB)) is not None  # b answered: no handshake pending
    sim.partition([a], [b])
    sim.loop.call_at(2.0, wa.send_app, PB, 100)
    sim.run_for(30.0)
    # The timer runs from the first data sent after the last packet received.
    assert [r.time for r in sends(sim, a, size=148)] == [0.0, 17.0, 22.0, 27.0]


def test_initiator_rekeys_after_120_s_without_losing_data(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)

    async def traffic() -> None:
        for _ in range(20):
            wa.send_app(PB, 200)
            await asyncio.sleep(10.0)

    sim.run(traffic())
    sim.run_for(1.0)
    # The session from 0.04 s is older than 120 s at the send at 130 s.
    assert [r.time for r in sends(sim, a, size=148)] == [0.0, 130.0]
    assert wa.stats(PB).handshakes_completed == 2
    assert wb.stats(PA).handshakes_completed == 2
    assert wb.stats(PA).app_packets_received == 20


def test_duplicated_packets_are_rejected_by_the_replay_window(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    a.set_link(LinkSpec(delay_s=0.01, duplicate=1.0))
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    for _ in range(5):
        wa.send_app(PB, 100)
    sim.run_for(1.0)
    assert wb.stats(PA).app_packets_received == 5
    assert wb.drops == {"replayed_initiation": 1, "replayed": 5}


# ---------------------------------------------------------------- mac1 and authentication


def test_initiations_carry_a_real_mac1(sim: Simulation) -> None:
    a = sim.add_host("a", link=LINK)
    spy = sim.add_host("spy", link=LINK)
    seen = Recorder(sim)
    spy.runtime().open_udp("0.0.0.0", 51820, seen)
    wa = SimWireGuard(a, "wg0", KA)
    wa.add_peer(PB, endpoint=(spy.address, 51820), keepalive=25)
    sim.run_for(1.0)
    [initiation] = seen.payloads
    assert len(initiation) == 148
    assert verify_mac1(mac1_key(PB.raw), initiation)
    assert not verify_mac1(mac1_key(PA.raw), initiation)
    assert initiation[40:72] == PA.raw


def test_responder_drops_bad_mac1_and_unknown_peers(sim: Simulation) -> None:
    b = sim.add_host("b", link=LINK)
    wb = SimWireGuard(b, "wg0", KB)
    wb.add_peer(PA)
    attacker = sim.add_host("attacker", link=LINK)
    sock = attacker.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    stranger = key(9).public_key().raw
    ts = tai64n(EPOCH_S)
    sock.sendto(encode_initiation(1, bytes(32), PA.raw, ts, mac1_key(PA.raw)), (b.address, 51820))
    sock.sendto(encode_initiation(2, bytes(32), stranger, ts, mac1_key(PB.raw)), (b.address, 51820))
    sock.sendto(b"\x04" + bytes(40), (b.address, 51820))
    sock.sendto(b"\x01 not an initiation", (b.address, 51820))
    sim.run_for(1.0)
    assert wb.drops == {"bad_mac1": 1, "unknown_peer": 1, "unknown_index": 1, "malformed": 1}
    assert sends(sim, b) == []
    assert wb.read("wg0").peers[0].rx_bytes == 0


# ---------------------------------------------------------------- NATs and roaming


def test_two_full_cone_nats_connect_directly(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim, NatKind.FULL_CONE, NatKind.FULL_CONE)
    wa.add_peer(PB, endpoint=public(b), keepalive=25)
    wb.add_peer(PA, endpoint=public(a), keepalive=25)
    sim.run_until(lambda: wa.has_session(PB) and wb.has_session(PA), timeout_s=10.0)
    assert sim.run(wa.ping(PB)) == pytest.approx(0.08)  # four links each way
    assert wb.read("wg0").peers[0].endpoint == public(a)


def test_two_symmetric_nats_cannot_connect_directly(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    wa.add_peer(PB, endpoint=public(b), keepalive=25)
    wb.add_peer(PA, endpoint=public(a), keepalive=25)
    sim.run_for(59.0)
    assert wa.read("wg0").peers[0].latest_handshake is None
    assert wb.read("wg0").peers[0].latest_handshake is None
    assert wa.stats(PB).initiations_sent == 12
    assert sim.drops == {"nat_no_mapping": 24}


def test_port_restricted_peer_reaches_a_public_one_and_is_answered_at_its_mapping(
    sim: Simulation,
) -> None:
    a, b, wa, wb = pair(sim, behind_a=NatKind.PORT_RESTRICTED_CONE)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    wa.send_app(PB, 100)
    sim.run_for(1.0)
    endpoint = wb.read("wg0").peers[0].endpoint
    assert endpoint is not None
    assert a.nat is not None
    assert endpoint[0] == a.nat.public_ip
    assert endpoint[1] != 51820  # not reachable at its configured port
    wb.send_app(PA, 300)
    sim.run_for(1.0)
    assert wa.stats(PB).app_bytes_received == 300


def test_roaming_follows_a_nat_rebinding(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim, behind_a=NatKind.PORT_RESTRICTED_CONE)
    wa.add_peer(PB, endpoint=(b.address, 51820))
    wb.add_peer(PA)
    wa.send_app(PB, 100)
    sim.run_for(5.0)
    before = wb.read("wg0").peers[0].endpoint
    assert a.nat is not None
    a.nat.reset()  # the box reboots: a's next packet gets a fresh external port
    wa.send_app(PB, 100)
    sim.run_for(1.0)
    after = wb.read("wg0").peers[0].endpoint
    assert before is not None
    assert after is not None
    assert after[0] == before[0]
    assert after[1] != before[1]
    wb.send_app(PA, 500)  # goes to the new mapping, so it arrives
    sim.run_for(1.0)
    assert wa.stats(PB).app_bytes_received == 500
    assert wb.drops == {}


# ---------------------------------------------------------------- the backend interface


def test_backend_interface(sim: Simulation) -> None:
    _, b, wa, _ = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820), allowed_ips=("10.9.0.2/32",))
    assert wa.name == "sim"
    assert wa.exists("wg0")
    assert not wa.exists("wg1")
    assert wa.mtu("wg0") == 1420
    assert wa.mtu("wg1") is None
    info = wa.read("wg0")
    assert (info.name, info.public_key, info.listen_port) == ("wg0", PA, 51820)
    assert info.peers[0].allowed_ips == ("10.9.0.2/32",)
    wa.set_endpoint("wg0", PB, ("127.0.0.1", 40000))
    assert wa.read("wg0").peers[0].endpoint == ("127.0.0.1", 40000)
    stranger = PublicKey(bytes(32))
    with pytest.raises(BackendError, match="not on interface"):
        wa.set_endpoint("wg0", stranger, ("127.0.0.1", 1))
    with pytest.raises(BackendError, match="not found"):
        wa.read("wg1")
    with pytest.raises(BackendError, match="is not an IP address"):
        wa.set_endpoint("wg0", PB, ("relay.example", 1))
    with pytest.raises(BackendError, match="invalid interface name"):
        wa.exists("bad/name")
    with pytest.raises(ValueError, match="already"):
        wa.add_peer(PB)


def test_endpoint_on_loopback_reaches_a_local_proxy(sim: Simulation) -> None:
    """What the agent does: point the peer at a relay proxy on 127.0.0.1."""
    a, _, wa, _ = pair(sim)
    proxy = Recorder(sim)
    a.runtime().open_udp("127.0.0.1", 40000, proxy)
    wa.add_peer(PB)
    wa.set_endpoint("wg0", PB, ("127.0.0.1", 40000))
    wa.set_keepalive("wg0", PB, 25, kick=True)
    sim.run_for(1.0)
    assert [(t, len(d), src) for t, d, src in proxy.got] == [(0.0, 148, ("127.0.0.1", 51820))]


def test_crash_and_restore_reboot_the_interface(sim: Simulation) -> None:
    a, b, wa, wb = pair(sim)
    wa.add_peer(PB, endpoint=(b.address, 51820), keepalive=25)
    wb.add_peer(PA, endpoint=(a.address, 51820), keepalive=25)
    sim.run_for(1.0)
    assert wb.has_session(PA)
    b.crash()
    assert not wb.exists("wg0")
    with pytest.raises(BackendError, match="not found"):
        wb.read("wg0")
    sim.run_for(1.0)
    b.restore()  # at t=2: the interface comes up with its configuration...
    info = wb.read("wg0").peers[0]
    assert (info.latest_handshake, info.rx_bytes, info.tx_bytes) == (None, 0, 148)
    # ...and its keepalive starts a handshake at once, which a answers.
    assert sim.run_until(lambda: wb.has_session(PA), timeout_s=60.0) == pytest.approx(2.05)
    assert wb.read("wg0").peers[0].latest_handshake == pytest.approx(EPOCH_S + 2.04)


def test_send_app_checks_sizes_and_peers(sim: Simulation) -> None:
    _, _, wa, _ = pair(sim)
    wa.add_peer(PB)
    with pytest.raises(ValueError, match="app packets"):
        wa.send_app(PB, 10)
    with pytest.raises(ValueError, match="app packets"):
        wa.send_app(PB, 1421)
    with pytest.raises(ValueError, match="not a peer"):
        wa.send_app(KA.public_key(), 100)
    wa.remove_peer(PB)
    assert wa.read("wg0").peers == ()


def _lossy_tunnel(seed: int) -> tuple[str, int]:
    with Simulation(seed=seed) as sim:
        lossy = LinkSpec(delay_s=0.02, jitter_s=0.01, loss=0.2)
        a = sim.add_host("a", behind=NatKind.FULL_CONE, link=lossy)
        b = sim.add_host("b", behind=NatKind.RESTRICTED_CONE, link=lossy)
        wa = SimWireGuard(a, "wg0", KA, rekey_jitter=True)
        wb = SimWireGuard(b, "wg0", KB, rekey_jitter=True)
        wa.add_peer(PB, endpoint=public(b), keepalive=25)
        wb.add_peer(PA, endpoint=public(a), keepalive=25)

        async def traffic() -> None:
            for _ in range(300):
                wa.send_app(PB, 500)
                await asyncio.sleep(1.0)

        sim.run(traffic())
        return sim.trace_digest(), wb.stats(PA).app_packets_received


def test_tunnel_runs_are_reproducible() -> None:
    digest, received = _lossy_tunnel(5)
    assert 150 < received < 300  # 20 % loss on each of two links, and handshakes
    assert _lossy_tunnel(5) == (digest, received)
    assert _lossy_tunnel(6)[0] != digest
