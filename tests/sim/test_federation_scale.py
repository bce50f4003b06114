"""Federation at scale, scaled down: issue 10's acceptance on the simulator.

36 federated relays (each started with one or two earlier relays as its
bootstrap: a random tree) and 120 production agents that know one or two
relays each, NATs mixed so some pairs need a relay. It is the scenario of
bench/federation_scale.py (imported from there, so the figures in
docs/PERFORMANCE.md section 6 and these bounds come from the same code), run
once for the module: the federation converges, agents connect, a steady
window, then 20 % of the relays (those carrying the most sessions) are
killed at once.

Lookups are counted message by message: every DISCOVERY_QUERY an agent's
links send for a lookup (retransmissions included) and every one a relay
sends a holder while handling that agent's query. Times are virtual seconds;
the run is exactly repeatable, so the bounds are today's figures with room
for tuning, not for a change of behaviour.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import federation_scale as fs  # (bench/ is not a package)

from wgrelay.relay.federation import FederationConfig

K = FederationConfig().replicas
PARAMS = fs.Params(relays=36, peers=120, window_s=20.0, settle_s=5.0, recovery_timeout_s=60.0)
SYNC_S = FederationConfig().sync_interval_s

CONVERGED_BOUND_S = 2 * SYNC_S + 2.0
"""The sync at start finds relays that know no one yet; by the second (10 s)
each relay's gossip has reached most others, and a relay takes page after
page from the one it syncs with. Measured: 11.25 s."""
CONNECTED_BOUND_S = 10.0
"""Relay first: 0.5 s of start grace (peers starting together register
first), the lookup, the relay session, WireGuard's first handshake through
it; the pairs that can go direct move there about 2 s later."""
PAIR_RECOVERY_BOUND_S = 16.0
"""A relay carrying traffic is noticed lost in 2 s (an idle link in 9 s:
nothing authenticated heard); then a lookup at the home (up to 2 s when the
home waits on a dead holder, longer when the home itself died unnoticed:
the lookup times out and widens), a session at the next place, and
WireGuard's 5 s handshake retry through it. Measured: the agents say
recovered within 10 s, a ping is answered within 14 s."""
DEAD_DECLARED_BOUND_S = 25.0
"""First suspicion: a direct probe (1 s), two indirect (1 s), suspect for
4 s; then about 2 s a hop (a gossip round, one probe of one's own), three
rounds per notice. Measured: 14 s."""
RECORDS_BOUND_S = 25.0
"""A home re-places its peers' records as soon as it declares a holder dead.
Measured: 13 s."""


@pytest.fixture(scope="module")
def run() -> fs.Run:
    result = fs.run(PARAMS)
    print({k: v for k, v in result.figures.items() if not k.startswith("lookups")})
    return result


def test_the_federation_converges_within_two_sync_intervals(run: fs.Run) -> None:
    t = run.figures["federation_converged_at_s"]
    assert t is not None
    assert t <= CONVERGED_BOUND_S


def test_every_pair_connects_and_the_records_are_in_place(run: fs.Run) -> None:
    f = run.figures
    assert f["pairs_not_connected"] == 0
    assert f["all_connected_after_s"] <= CONNECTED_BOUND_S
    assert f["paths"]["relayed"] >= f["pairs_needing_relay"] > 0
    assert f["records_placed_before_kill"] == f"{PARAMS.peers}/{PARAMS.peers} of {PARAMS.peers}"
    assert f["loop_errors"] == 0


def test_every_lookup_while_all_relays_are_up_costs_at_most_k_plus_1_requests(
    run: fs.Run,
) -> None:
    lookups = run.lookups.of(fs.START) + run.lookups.of(fs.STEADY)
    assert len(lookups) >= run.figures["pairs_needing_relay"]
    assert run.lookups.unattributed == 0
    costs = [lk.requests for lk in lookups]
    assert max(costs) <= K + 1
    # both kinds happen: answered by the home, and the home asking the holders
    assert 1 in costs
    assert K + 1 in costs


def test_a_relay_never_asks_more_than_k_holders_per_query_it_is_sent(run: fs.Run) -> None:
    """Whatever happens to a lookup (retransmissions, widening after a dead
    home), each query an agent sends costs the federation at most k more:
    relays answer relays from what they hold, never forwarding further."""
    for lk in run.lookups.lookups:
        assert lk.relay_requests <= K * lk.agent_requests
        if lk.agent_requests == 1:
            assert lk.requests <= K + 1


def test_every_pair_through_a_killed_relay_recovers(run: fs.Run) -> None:
    """Each pair that went through a killed relay is pinged every second from
    5 s before the kill: recovered when a ping sent after it is answered.
    (A session that arrived during a direct probe-back used to leave the
    proxy holding the relay's frames for good while both agents said
    relayed; fixed in AgentCore.on_relayed.)"""
    f = run.figures
    assert f["killed"] == round(0.2 * PARAMS.relays)
    assert f["killed_carrying_sessions"] == f["killed"]
    assert f["connected_pairs_through_killed"] > 0
    rec = run.recovery
    assert rec is not None
    # both agents say they are connected again through live relays
    assert set(rec.pairs) == set(run.hit)
    assert max(rec.pairs.values()) <= PAIR_RECOVERY_BOUND_S
    assert f["pairs_connected_at_end"] == f["pairs"]
    # and traffic flows again through every one of them
    assert set(rec.answered) == set(run.hit)
    assert not rec.held
    assert max(rec.answered.values()) <= PAIR_RECOVERY_BOUND_S


def test_the_survivors_declare_the_dead_and_re_place_every_record(run: fs.Run) -> None:
    assert run.recovery is not None
    dead = run.recovery.dead_declared_s
    placed = run.recovery.records_placed_s
    assert dead is not None
    assert dead <= DEAD_DECLARED_BOUND_S
    assert placed is not None
    assert placed <= RECORDS_BOUND_S
    f = run.figures
    assert f["records_placed_after_kill"] == f"{PARAMS.peers}/{PARAMS.peers} of {PARAMS.peers}"


@pytest.mark.xfail(
    strict=True,
    reason="client: an agent whose home died unnoticed asks it and retransmits, "
    "then asks the peer's k holders itself (plan_peers._widen), some of them "
    "dead too, each retransmitted: up to 16 datagrams here, 19 with 200 relays "
    "(22 to 45 when it widened to 8 relays that each asked the holders). A "
    "lookup should skip relays not answering and count a retransmission as "
    "the same request.",
)
def test_every_lookup_after_the_kill_costs_at_most_k_plus_1_requests(run: fs.Run) -> None:
    lookups = run.lookups.of(fs.AFTER_KILL)
    assert lookups
    assert max(lk.requests for lk in lookups) <= K + 1
