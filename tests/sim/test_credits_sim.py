"""Credits in the simulator: a pair relayed through R1, which member M runs,
signs receipts (the production agents, counting what they saw); R2 learns
M's balance by the relays' gossip; forged and replayed receipts are refused
at R2 and counted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from wgrelay import xeddsa
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.receipts import RECEIPT_DOMAIN, Receipt, Receipts, make_claim
from wgrelay.relay.credits import ASK_INTERVAL_S
from wgrelay.relay.ledger import Ledger
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh, SimRelay


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=14) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def ledger_of(relay: SimRelay) -> Ledger:
    assert relay.core is not None
    assert relay.core.ledger is not None
    return relay.core.ledger


def test_receipts_earn_for_the_operator_and_spread_forgeries_refused(mesh: SimMesh) -> None:
    member = PrivateKey(bytes(range(7, 39)))  # M: runs R1 (its WireGuard key)
    r1 = mesh.add_relay("r1", link=LinkSpec(delay_s=0.005))
    r2 = mesh.add_relay("r2", link=LinkSpec(delay_s=0.040), bootstrap=[r1])
    for relay, claim in ((r1, make_claim(member, r1.key, 1)), (r2, None)):
        assert relay.core is not None  # before its first announcement: it says CREDITS
        relay.core.enable_credits(Ledger(None), claim, mesh.sim.now())
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    mesh.connect(a, b)
    mesh.start([a, b])
    mesh.wait_connected(a, b, timeout_s=30)
    assert a.relay_for(b) == r1.key
    traffic = mesh.ping_every(a, b, interval_s=0.1, timeout_s=1.0)

    m = member.public_key().raw
    mesh.sim.run_until(
        lambda: ledger_of(r1).statement(m).relays[0].receipts >= 2, timeout_s=ASK_INTERVAL_S + 10
    )
    mesh.sim.run_until(lambda: ledger_of(r2).balance(m) == ledger_of(r1).balance(m), timeout_s=10)
    at_r1 = ledger_of(r1).statement(m)
    at_r2 = ledger_of(r2).statement(m)
    print(
        f"M earned {at_r1.earned} bytes in {at_r1.relays[0].receipts} receipts "
        f"at {mesh.sim.now():.1f} s; R2 says {at_r2.earned}"
    )
    assert at_r2 == at_r1
    assert at_r1.earned > 0
    # what each member used is what it signed, and no more than R1 carried
    st = r1.stats()
    assert st is not None
    used_a = ledger_of(r2).statement(a.public.raw).used
    used_b = ledger_of(r2).statement(b.public.raw).used
    assert 0 < used_a <= st.bytes_forwarded
    assert 0 < used_b <= st.bytes_forwarded
    assert at_r1.earned == used_a + used_b
    # the agents run in port mode: what they vouched for is WireGuard's own
    # transfer counters since the session began (nothing passes the proxy)
    assert a.agent is not None
    assert a.agent.port_mode.endpoint(b.public) is not None
    seen = a.agent._observed(b.public)
    assert seen.proxy_bytes == 0
    assert seen.wireguard_bytes >= used_a - 16_384

    # R1's next receipts supersede these: keep one to replay later
    first = _held(ledger_of(r2), a.public)
    mesh.sim.run_until(
        lambda: _held(ledger_of(r2), a.public).seq > first.seq, timeout_s=ASK_INTERVAL_S + 10
    )
    before = ledger_of(r2).statement(m)
    forged = replace(first, seq=first.seq + 50, nbytes=first.nbytes * 100)  # signature kept
    stranger = PrivateKey.generate()
    wrong_signer = Receipt(r1.key, a.public, first.session_id, 99, 10**9, first.time_ms)
    # signed, but by another key than the peer's it names
    sig = xeddsa.sign(stranger.raw, RECEIPT_DOMAIN + wrong_signer.signed_part())
    wrong_signer = replace(wrong_signer, signature=sig)
    assert r1.core is not None
    r1.core.federation._send(r2.key, Receipts((forged, wrong_signer, first)), mesh.sim.now())
    mesh.sim.run_for(1.0)
    counters = r2.stats()
    assert counters is not None
    assert counters.credits["refused_bad_signature"] == 2
    assert counters.credits["refused_replayed"] == 1
    assert ledger_of(r2).statement(m) == before
    assert traffic.answered > 0


def _held(led: Ledger, peer: PublicKey) -> Receipt:
    """The newest receipt ``led`` holds from ``peer``."""
    rows = led._conn.execute(
        "SELECT relay, peer, session, seq, bytes, time_ms, signature FROM receipts"
        " WHERE peer = ? ORDER BY seq DESC",
        (peer.raw,),
    ).fetchall()
    r, p, s, seq, n, t, sig = rows[0]
    return Receipt(PublicKey(bytes(r)), PublicKey(bytes(p)), bytes(s), seq, n, t, bytes(sig))


def test_a_relay_that_starts_later_learns_the_operator_claim(mesh: SimMesh) -> None:
    """The claim went out once, at the first spread: R1 alone then (the
    first relay of a mesh, or one restarted before it heard of the others),
    it reached no one, and no relay started later ever credited M. A claim
    for a relay no one knows is refused (claims are kept for good)."""
    member = PrivateKey(bytes(range(7, 39)))
    r1 = mesh.add_relay("r1", link=LinkSpec(delay_s=0.005))
    assert r1.core is not None
    r1.core.enable_credits(Ledger(None), make_claim(member, r1.key, 1), mesh.sim.now())
    mesh.sim.run_for(10.0)
    r2 = mesh.add_relay("r2", link=LinkSpec(delay_s=0.040), bootstrap=[r1])
    assert r2.core is not None
    r2.core.enable_credits(Ledger(None), None, mesh.sim.now())
    started = mesh.sim.now()
    mesh.sim.run_until(lambda: ledger_of(r2).operator_of(r1.key) is not None, timeout_s=30)
    print(f"R2 learned M's claim {mesh.sim.now() - started:.1f} s after it started")
    assert ledger_of(r2).operator_of(r1.key) == member.public_key()

    before = ledger_of(r2).refused["wrong_relay"]
    stranger = RelayIdentity.generate()
    made_up = make_claim(member, stranger.public, 2).endorsed_by(stranger)
    r1.core.federation._send(r2.key, Receipts((), (made_up,)), mesh.sim.now())
    mesh.sim.run_for(1.0)
    assert ledger_of(r2).operator_of(stranger.public) is None
    assert ledger_of(r2).refused["wrong_relay"] > before
