"""AgentCore's per-peer rules under a fake clock (no WireGuard, no sockets)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.actions import (
    Action,
    CloseRelay,
    HoldProxy,
    Kick,
    LeaveRelay,
    ReplaceRelay,
    StartRelay,
    UseDirect,
    UseProxy,
)
from wgrelay.mesh.agent import AgentConfig, AgentCore, PathKind
from wgrelay.mesh.backend.base import InterfaceInfo, PeerInfo
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.nat import TryDirect

WALL0 = 1_700_000_000.0
RELAY = PrivateKey.generate().public_key()
RELAY_EP: Endpoint = ("203.0.113.10", 51821)
DIRECT: Endpoint = ("198.51.100.9", 51820)
PROXY: Endpoint = ("127.0.0.1", 40000)


def keys_ordered() -> tuple[PublicKey, PublicKey]:
    """(smaller, larger) public keys: the smaller one initiates relay sessions."""
    k1, k2 = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    return (k1, k2) if k1.raw < k2.raw else (k2, k1)


def iface(*peers: PeerInfo) -> InterfaceInfo:
    return InterfaceInfo("wg0", None, None, 51820, None, peers)


def peer(key: PublicKey, **kw: object) -> PeerInfo:
    base = PeerInfo(
        public_key=key,
        endpoint=DIRECT,
        allowed_ips=("10.0.0.2/32",),
        latest_handshake=None,
        rx_bytes=0,
        tx_bytes=0,
        persistent_keepalive=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


_DEFAULTS = AgentConfig()


def direct_first_config(**kw: Any) -> AgentConfig:
    """These rules as they were before relay-first (still the rules with
    relays disabled, and of a probe-back when no relay told the mappings):
    direct candidates first, the first try back after ``probe_back_s``,
    each candidate given ``direct_probe_s`` (tests/unit/test_upgrade.py has
    relay-first and the coordinated tries)."""
    kw.setdefault("relay_first", False)
    kw.setdefault("start_grace_s", 0.0)
    kw.setdefault("first_upgrade_s", kw.get("probe_back_s", _DEFAULTS.probe_back_s))
    kw.setdefault("upgrade_probe_s", kw.get("direct_probe_s", _DEFAULTS.direct_probe_s))
    return AgentConfig(**kw)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def at(self, t: float) -> tuple[float, float]:
        self.t = t
        return t, WALL0 + t


def relayed_core(cfg: AgentConfig | None = None) -> tuple[AgentCore, PublicKey]:
    """A core whose only peer is relayed through RELAY via PROXY at t=3.1."""
    me, other = keys_ordered()
    core = AgentCore(me, cfg or direct_first_config())
    core.observe(iface(peer(other)), 0.0, WALL0)
    core.observe(iface(peer(other)), 3.0, WALL0 + 3)
    assert core.on_relayed(other, RELAY, False, 3.1, WALL0 + 3.1, RELAY_EP) == [UseProxy(other)]
    core.proxy_endpoints = {PROXY}
    core.observe(iface(peer(other, endpoint=PROXY)), 3.2, WALL0 + 3.2)
    return core, other


def test_fresh_handshake_means_direct_and_nothing_to_do() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config())
    acts = core.observe(iface(peer(other, latest_handshake=WALL0 - 30)), 0.0, WALL0)
    assert acts == []
    assert core.peers[other].kind == PathKind.DIRECT


def test_no_handshake_tries_direct_then_relays_after_the_probe_time() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(direct_probe_s=3.0))
    p = peer(other)
    assert core.observe(iface(p), 0.0, WALL0) == [TryDirect(other, DIRECT), Kick(other, 25)]
    assert core.peers[other].kind == PathKind.PROBING
    assert core.observe(iface(p), 2.9, WALL0 + 2.9) == []
    assert core.observe(iface(p), 3.0, WALL0 + 3.0) == [StartRelay(other)]
    assert core.peers[other].kind == PathKind.RELAY_PENDING
    assert core.observe(iface(p), 4.0, WALL0 + 4.0) == []  # asked once


def test_every_candidate_is_tried_in_order() -> None:
    me, other = keys_ordered()
    cache = ConnectionCache(None)
    extra = [("198.51.100.20", 51820), ("198.51.100.21", 51820)]
    for ep in extra:  # known from earlier runs, each worked once
        cache.record_success(other, ep, WALL0 - 7200)
    core = AgentCore(me, direct_first_config(direct_probe_s=3.0), cache)
    tried: list[Endpoint] = []
    p = peer(other)
    for t in range(0, 13):
        acts = core.observe(iface(p), float(t), WALL0 + t)
        tried.extend(a.endpoint for a in acts if isinstance(a, TryDirect))
    assert sorted(tried) == sorted([DIRECT, *extra])
    assert len(tried) == 3  # no candidate skipped, none twice
    assert core.peers[other].kind == PathKind.RELAY_PENDING


def test_larger_key_waits_for_the_other_side_before_asking() -> None:
    small, large = keys_ordered()
    core = AgentCore(large, direct_first_config(direct_probe_s=3.0, initiate_delay_s=2.0))
    p = peer(small)
    core.observe(iface(p), 0.0, WALL0)
    assert core.observe(iface(p), 3.0, WALL0 + 3) == []
    assert core.tick(4.9) == []
    assert core.tick(5.0) == [StartRelay(small)]


def test_incoming_session_while_waiting_wins() -> None:
    small, large = keys_ordered()
    core = AgentCore(large, direct_first_config(direct_probe_s=3.0, initiate_delay_s=2.0))
    core.observe(iface(peer(small)), 0.0, WALL0)
    core.observe(iface(peer(small)), 3.0, WALL0 + 3)
    assert core.on_relayed(small, RELAY, True, 3.5, WALL0 + 3.5, RELAY_EP) == [UseProxy(small)]
    assert core.tick(10.0) == []
    assert core.peers[small].kind == PathKind.RELAYED


def test_handshake_during_probe_means_direct() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config())
    core.observe(iface(peer(other)), 0.0, WALL0)
    acts = core.observe(iface(peer(other, latest_handshake=WALL0 + 0.8)), 1.0, WALL0 + 1)
    assert acts == []
    assert core.peers[other].kind == PathKind.DIRECT
    entry = next(e for e in core.cache.entries(other) if e.endpoint == DIRECT)
    assert entry.success_count == 1
    assert entry.latency_ms is not None  # sub-second handshake time: measured
    assert abs(entry.latency_ms - 800) < 1


def test_peer_without_endpoint_is_relayed_at_once() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config())
    assert core.observe(iface(peer(other, endpoint=None)), 0.0, WALL0) == [StartRelay(other)]


def test_seed_rule_many_recent_failures_relays_before_trying_all() -> None:
    me, other = keys_ordered()
    cache = ConnectionCache(None)
    for i in range(11):
        cache.record_failure(other, DIRECT, WALL0 - 60 + i)
    core = AgentCore(me, direct_first_config(), cache)
    acts = core.observe(iface(peer(other)), 0.0, WALL0)
    assert StartRelay(other) in acts
    assert "seed rule" in core.peers[other].reason


def test_restart_goes_straight_to_the_relay_that_worked() -> None:
    me, other = keys_ordered()
    cache = ConnectionCache(None)
    cache.record_failure(other, DIRECT, WALL0 - 100)
    cache.record_relay_success(other, RELAY, RELAY_EP, WALL0 - 50)
    core = AgentCore(me, direct_first_config(), cache)
    acts = core.observe(iface(peer(other)), 0.0, WALL0)
    assert acts == [StartRelay(other)]  # no TryDirect first
    assert "cache: relayed last time" in core.peers[other].reason


def test_relay_disabled_never_relays() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(relay_enabled=False))
    for t in range(0, 120):
        acts = core.observe(iface(peer(other)), float(t), WALL0 + t)
        assert not any(isinstance(a, StartRelay) for a in acts)
    assert core.peers[other].kind == PathKind.PROBING


def test_disabling_relays_at_runtime_drops_relay_paths() -> None:
    core, other = relayed_core()
    acts = core.set_relay_enabled(False, 10.0, WALL0 + 10)
    assert CloseRelay(other) in acts
    assert UseDirect(other, DIRECT, None) in acts
    assert core.peers[other].kind == PathKind.PROBING
    assert core.on_relayed(other, RELAY, True, 11.0, WALL0 + 11, RELAY_EP) == [CloseRelay(other)]


def test_lost_relay_path_asks_again_and_failures_back_off() -> None:
    core, other = relayed_core(
        direct_first_config(relay_retry_initial_s=5.0, relay_retry_max_s=20.0)
    )
    assert core.on_relay_lost(other, "peer_gone", 10.0, WALL0 + 10) == [StartRelay(other)]
    assert core.on_relay_failed(other, "no relay", 11.0) == []
    assert core.tick(15.9) == []
    assert core.tick(16.0) == [StartRelay(other)]
    core.on_relay_failed(other, "no relay", 16.5)
    assert core.tick(26.4) == []
    assert core.tick(26.5) == [StartRelay(other)]  # 10 s: doubled


def test_probe_back_success_returns_to_direct() -> None:
    core, other = relayed_core(direct_first_config(probe_back_s=30.0))
    relayed_at = 3.1
    assert core.observe(iface(peer(other, endpoint=PROXY)), 33.0, WALL0 + 33) == []
    acts = core.observe(iface(peer(other, endpoint=PROXY)), relayed_at + 30, WALL0 + 33.1)
    assert acts == [HoldProxy(other, True), TryDirect(other, DIRECT), Kick(other, 25)]
    # data from the peer arrives while WireGuard points at the candidate
    acts = core.observe(iface(peer(other, endpoint=DIRECT, rx_bytes=500)), 34.0, WALL0 + 34)
    assert acts == [HoldProxy(other, False), LeaveRelay(other), Kick(other, 25)]
    p = core.peers[other]
    assert p.kind == PathKind.DIRECT
    assert "direct path works again" in p.reason


def test_failed_probe_back_goes_back_to_the_relay_and_waits_longer() -> None:
    core, other = relayed_core(direct_first_config(probe_back_s=30.0, direct_probe_s=3.0))
    core.observe(iface(peer(other, endpoint=PROXY)), 33.1, WALL0 + 33.1)  # probe starts
    acts = core.observe(iface(peer(other, endpoint=DIRECT)), 36.1, WALL0 + 36.1)
    assert acts == [UseProxy(other), HoldProxy(other, False)]
    p = core.peers[other]
    assert p.kind == PathKind.RELAYED
    assert p.next_probe_back == 36.1 + 60.0


def test_a_session_arriving_during_a_probe_back_releases_the_proxy() -> None:
    """Found by the federation-scale simulation: a relay died during a direct
    retry, the new session arrived while the proxy held the relay's frames,
    and the retry's end never released them: every frame from the relay was
    dropped for good while both agents said "relayed"."""
    core, other = relayed_core(direct_first_config(probe_back_s=30.0, direct_probe_s=3.0))
    acts = core.observe(iface(peer(other, endpoint=PROXY)), 33.1, WALL0 + 33.1)
    assert HoldProxy(other, True) in acts  # the retry holds the relay's frames
    other_relay = PrivateKey.generate().public_key()
    acts = core.on_relayed(other, other_relay, True, 34.0, WALL0 + 34.0, RELAY_EP)
    assert HoldProxy(other, False) in acts
    assert acts[-1] == UseProxy(other)
    p = core.peers[other]
    assert p.kind == PathKind.RELAYED
    assert not p.probing_back
    # and the abandoned retry does not come back to move the endpoint
    acts = core.observe(iface(peer(other, endpoint=PROXY, rx_bytes=100)), 36.5, WALL0 + 36.5)
    assert not [a for a in acts if isinstance(a, HoldProxy | UseDirect)]


def test_peer_reaching_us_directly_while_relayed_moves_us_to_direct() -> None:
    core, other = relayed_core()
    wan: Endpoint = ("198.51.100.77", 40001)
    acts = core.observe(iface(peer(other, endpoint=wan, rx_bytes=96)), 10.0, WALL0 + 10)
    assert acts == [LeaveRelay(other), Kick(other, 25)]
    assert core.peers[other].kind == PathKind.DIRECT
    assert core.peers[other].direct_endpoint == wan


def test_flapping_path_waits_longer_each_time() -> None:
    core, other = relayed_core(direct_first_config(probe_back_s=30.0, flap_window_s=300.0))
    core.observe(iface(peer(other, endpoint=PROXY)), 33.1, WALL0 + 33.1)
    core.observe(iface(peer(other, endpoint=DIRECT, rx_bytes=500)), 34.0, WALL0 + 34)
    assert core.peers[other].kind == PathKind.DIRECT
    # it breaks again a minute later: relayed once more
    acts: list[Action] = []
    for t in range(60, 80):
        acts = core.observe(
            iface(peer(other, endpoint=DIRECT, rx_bytes=500, tx_bytes=t * 100)),
            float(t),
            WALL0 + t,
        )
        if acts:
            break
    assert core.peers[other].kind == PathKind.PROBING
    core.on_relayed(other, RELAY, False, 90.0, WALL0 + 90, RELAY_EP)
    p = core.peers[other]
    assert p.flaps == 1
    assert p.next_probe_back == 90.0 + 60.0  # 30 s * 2**flaps
    assert "flapped 1x" in p.reason


def test_direct_path_gone_silent_is_probed_again() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(broken_after_s=15.0))
    hs = WALL0 - 170
    core.observe(iface(peer(other, latest_handshake=hs, tx_bytes=100)), 0.0, WALL0)
    assert core.peers[other].kind == PathKind.DIRECT
    acts: list[Action] = []
    for t in range(1, 20):
        acts = core.observe(
            iface(peer(other, latest_handshake=hs, tx_bytes=100 + t * 148)),
            float(t),
            WALL0 + t,
        )
        if acts:
            break
    assert acts == [TryDirect(other, DIRECT), Kick(other, 25)]
    assert core.peers[other].kind == PathKind.PROBING


def test_restore_puts_back_the_direct_endpoint_and_keepalive() -> None:
    core, other = relayed_core()
    assert core.restore_actions() == [UseDirect(other, DIRECT, 0)]


def test_peer_leaving_the_interface_closes_its_relay() -> None:
    core, other = relayed_core()
    assert core.observe(iface(), 5.0, WALL0 + 5) == [CloseRelay(other)]
    assert other not in core.peers


def test_session_for_an_unknown_peer_is_closed() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config())
    assert core.on_relayed(other, RELAY, True, 0.0) == [CloseRelay(other)]


def test_peer_closing_the_session_on_purpose_is_checked_directly_first() -> None:
    core, other = relayed_core()
    roamed: Endpoint = ("198.51.100.77", 40001)
    core.observe(iface(peer(other, endpoint=roamed)), 5.0, WALL0 + 5)  # WireGuard followed it
    acts = core.on_relay_lost(other, "normal", 5.1, WALL0 + 5.1)
    assert acts == [LeaveRelay(other)]  # the endpoint stays: WireGuard followed the peer
    assert core.peers[other].kind == PathKind.PROBING
    # the next look: what the peer sent since came from there, so it is direct
    core.observe(iface(peer(other, endpoint=roamed, rx_bytes=5000)), 5.3, WALL0 + 5.3)
    assert core.peers[other].kind == PathKind.DIRECT
    assert "peer reached us directly" in core.peers[other].reason


def test_peer_leaving_the_relay_starts_the_tries_where_wireguard_points() -> None:
    core, other = relayed_core()
    roamed: Endpoint = ("198.51.100.77", 40001)
    core.observe(iface(peer(other, endpoint=roamed)), 5.0, WALL0 + 5)
    core.on_relay_lost(other, "normal", 5.1, WALL0 + 5.1)
    # nothing heard since: the tries start, WireGuard's endpoint first
    acts = core.observe(iface(peer(other, endpoint=roamed)), 5.3, WALL0 + 5.3)
    assert TryDirect(other, roamed) in acts
    assert core.peers[other].kind == PathKind.PROBING


def test_incoming_offer_while_direct_works_is_declined() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config())
    core.observe(iface(peer(other, latest_handshake=WALL0 - 100, rx_bytes=10)), 0.0, WALL0)
    core.observe(iface(peer(other, latest_handshake=WALL0 - 100, rx_bytes=20)), 1.0, WALL0 + 1)
    assert core.on_relayed(other, RELAY, True, 2.0, WALL0 + 2, RELAY_EP) == [CloseRelay(other)]
    assert core.peers[other].kind == PathKind.DIRECT


def test_peer_reaching_us_during_our_probe_back_counts_as_direct() -> None:
    core, other = relayed_core(direct_first_config(probe_back_s=30.0))
    start = 33.1 if core.own_key.raw < other.raw else 33.1 + 5.0
    core.observe(iface(peer(other, endpoint=PROXY)), start, WALL0 + start)
    assert core.peers[other].probing_back
    # our candidate is dead, but the peer's packet came in from its own address
    theirs: Endpoint = ("198.51.100.77", 40001)
    acts = core.observe(iface(peer(other, endpoint=theirs, rx_bytes=64)), start + 1, WALL0 + 40)
    assert acts == [HoldProxy(other, False), LeaveRelay(other), Kick(other, 25)]
    assert core.peers[other].direct_endpoint == theirs
    assert "peer reached us directly" in core.peers[other].reason


def test_only_one_side_probes_back_at_a_time() -> None:
    small, large = keys_ordered()
    first = AgentCore(small, direct_first_config(probe_back_s=30.0, direct_probe_s=3.0))
    second = AgentCore(large, direct_first_config(probe_back_s=30.0, direct_probe_s=3.0))
    for core, other in ((first, large), (second, small)):
        core.observe(iface(peer(other, endpoint=None)), 0.0, WALL0)
        core.on_relayed(other, RELAY, False, 1.0, WALL0 + 1, RELAY_EP)
    assert first.peers[large].next_probe_back == 31.0
    assert second.peers[small].next_probe_back == 31.0 + 5.0  # after the other's try ends


def test_probe_back_gets_its_full_time_even_when_the_cache_doubts_direct() -> None:
    me, other = keys_ordered()
    cache = ConnectionCache(None)
    for i in range(11):  # the seed's rule (b) holds: > 10 recent failures
        cache.record_failure(other, DIRECT, WALL0 - 100 + i)
    core = AgentCore(me, direct_first_config(probe_back_s=30.0, direct_probe_s=3.0), cache)
    core.observe(iface(peer(other)), 0.0, WALL0)
    assert core.peers[other].kind == PathKind.RELAY_PENDING
    core.on_relayed(other, RELAY, False, 1.0, WALL0 + 1, RELAY_EP)
    core.proxy_endpoints = {PROXY}
    start = core.peers[other].next_probe_back
    core.observe(iface(peer(other, endpoint=PROXY)), start, WALL0 + start)
    assert core.peers[other].probing_back
    for dt in (0.2, 1.0, 2.9):  # the attempt runs its course
        acts = core.observe(iface(peer(other, endpoint=DIRECT)), start + dt, WALL0 + start + dt)
        assert acts == []
        assert core.peers[other].probing_back


def test_relay_disabled_retries_direct_slowly_through_every_candidate() -> None:
    me, other = keys_ordered()
    cache = ConnectionCache(None)
    others = [("198.51.100.20", 51820), ("198.51.100.21", 51820)]
    for ep in (DIRECT, *others):
        cache.record_failure(other, ep, WALL0 - 100)
    core = AgentCore(me, direct_first_config(relay_enabled=False, probe_back_s=30.0), cache)
    tries: list[tuple[float, Endpoint]] = []
    t = 0.0
    while t < 40.0:
        acts = core.observe(iface(peer(other)), t, WALL0 + t)
        tries.extend((t, a.endpoint) for a in acts if isinstance(a, TryDirect))
        t = round(t + 0.2, 1)
    assert [e for _, e in tries[:3]] != [DIRECT] * 3  # not stuck on the first
    assert {e for _, e in tries[:3]} == {DIRECT, *others}
    assert tries[3][0] >= 9.0 + 30.0 - 0.5  # then a pause before the next round


def test_relayed_path_gone_silent_gets_a_new_session_behind_the_same_proxy() -> None:
    """A relay that lost the session without telling us (a restart a replayed
    REGISTER hid, a lost SESSION_CLOSE): WireGuard keeps sending through the
    proxy and hears nothing. The agent replaces the session, not the proxy."""
    cfg = direct_first_config(relay_silent_s=40.0, probe_back_s=900.0)
    core, other = relayed_core(cfg)
    # an idle tunnel: keepalives both ways every 25 s is not silence
    for t in range(4, 100):
        acts = core.observe(
            iface(peer(other, endpoint=PROXY, tx_bytes=t * 32, rx_bytes=(t // 25) * 32)),
            float(t),
            WALL0 + t,
        )
        assert acts == []
    # from t=100 on only tx grows
    acts = []
    t = 100
    while not acts:
        t += 1
        acts = core.observe(
            iface(peer(other, endpoint=PROXY, tx_bytes=t * 32, rx_bytes=3 * 32)),
            float(t),
            WALL0 + t,
        )
    # rx last grew at t=75 (the peer's keepalive); tx grew at 76: replaced at 76 + 40
    assert t == 116
    assert ReplaceRelay(other) in acts
    assert StartRelay(other) in acts  # the smaller key asks at once
    assert core.peers[other].kind == PathKind.RELAY_PENDING
    assert not any(isinstance(a, UseProxy | CloseRelay | LeaveRelay) for a in acts)


def test_next_timer_names_the_next_rule_due() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(direct_probe_s=3.0, probe_back_s=30.0))
    assert core.next_timer() == float("inf")  # no peer, nothing to do
    core.observe(iface(peer(other)), 0.0, WALL0)
    assert core.next_timer() == 3.0  # the direct candidate's time is up
    core.observe(iface(peer(other)), 3.0, WALL0 + 3)
    core.on_relayed(other, RELAY, False, 3.1, WALL0 + 3.1, RELAY_EP)
    assert core.next_timer() == 3.1 + 30.0  # the probe-back
    core.on_relay_lost(other, "peer_gone", 10.0, WALL0 + 10)
    core.on_relay_failed(other, "no relay", 10.0)
    assert core.next_timer() == 10.0 + direct_first_config().relay_retry_initial_s


def test_an_idle_tunnel_with_one_sided_keepalives_is_never_silent() -> None:
    """WireGuard restarts its keepalive timer on any packet, sent or received:
    with the same interval on both ends only one end sends keepalives, and
    hears nothing but the answers to its rekeys every two minutes."""
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(keepalive_s=25, broken_after_s=15.0))
    hs = WALL0 - 1
    core.observe(iface(peer(other, latest_handshake=hs)), 0.0, WALL0)
    assert core.peers[other].kind == PathKind.DIRECT
    tx = rx = 0
    for t in range(1, 601):
        if t % 25 == 0:
            tx += 32  # our keepalive, answered by nobody
        if t % 125 == 0:
            tx += 148  # rekey: initiation out, response in, a new handshake
            rx += 92
            hs = WALL0 + t
        acts = core.observe(
            iface(peer(other, latest_handshake=hs, tx_bytes=tx, rx_bytes=rx)), float(t), WALL0 + t
        )
        assert core.peers[other].kind == PathKind.DIRECT, (t, acts)


def test_data_sent_into_a_dead_direct_path_is_noticed_after_the_limit() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, direct_first_config(keepalive_s=25, broken_after_s=15.0))
    core.observe(iface(peer(other, latest_handshake=WALL0 - 1)), 0.0, WALL0)
    tx = 0
    for t in range(1, 40):
        tx += 1200  # data every second, nothing comes back
        core.observe(
            iface(peer(other, latest_handshake=WALL0 - 1, tx_bytes=tx)), float(t), WALL0 + t
        )
        if core.peers[other].kind != PathKind.DIRECT:
            break
    assert t == 16  # silent since t=1 (tx grew, rx did not), limit 15 s
    assert core.peers[other].kind in (PathKind.PROBING, PathKind.RELAY_PENDING)
