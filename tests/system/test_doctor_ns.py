"""``wgrelay doctor`` on the namespace testbed (issue 15's acceptance).

Two relays on the simulated internet, peer a behind a symmetric NAT (a fresh
public port per destination), peer b behind a cone NAT (one public port for
every destination). The doctor, run as a user would run it inside each
peer's namespace, must name each NAT's kind from where the two relays saw
its one socket; then, with the agents running, say why the pair is relayed
and what would make it direct.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario
from wgrelay.testbed.topology import Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


@pytest.fixture
def mixed_mesh() -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    with Testbed() as tb:
        r1, r2 = tb.add_relay("r1"), tb.add_relay("r2")
        a = tb.add_peer("a", nat="symmetric")
        b = tb.add_peer("b", nat="cone")
        a.add_wireguard_peer(b, endpoint=b.wan_endpoint)
        b.add_wireguard_peer(a, endpoint=a.wan_endpoint)
        sc = MeshScenario(tb)
        sc.start_relay(r1)
        sc.start_relay(r2)
        try:
            yield sc, a, b
        finally:
            for name, proc in [*sc.agents.items(), *((n, r.process) for n, r in sc.relays.items())]:
                if proc.running():
                    print(f"--- {name} log ---\n{proc.log_tail(30)}")


def wgrelay(sc: MeshScenario, peer: Peer, *args: str) -> tuple[int, str]:
    """Run ``wgrelay ARGS --state-dir (peer's)`` in the peer's namespace."""
    res = peer.ns.run(
        [sc.python, "-m", "wgrelay", *args, "--state-dir", str(sc.agent_state_dir(peer))],
        check=False,
        timeout=30,
    )
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, res.stdout


def doctor_json(sc: MeshScenario, peer: Peer) -> tuple[int, dict[str, Any]]:
    rc, out = wgrelay(sc, peer, "doctor", peer.wireguard().name, "--json")
    doc: dict[str, Any] = json.loads(out)
    return rc, doc


def findings(doc: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["check"] == check]


def peer_nat_known(sc: MeshScenario, peer: Peer) -> bool:
    doc = sc.status(peer)
    peers = doc.get("peers") if doc else None
    if not isinstance(peers, list) or not peers:
        return False
    entry = peers[0]
    return bool(
        entry["path"] == "relayed" and "unknown" not in (entry["nat"]["ours"], entry["nat"]["peer"])
    )


def test_doctor_names_symmetric_and_cone_nats_and_why_the_pair_is_relayed(
    mixed_mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = mixed_mesh
    t0 = time.monotonic()
    for peer in (a, b):
        for running in sc.relays.values():
            wgrelay(sc, peer, "add-bootstrap-relay", running.endpoint, str(running.key))

    # --- no agent yet: the probes use the interface's own key
    rc_a, doc_a = doctor_json(sc, a)
    rc_b, doc_b = doctor_json(sc, b)
    for doc in (doc_a, doc_b):
        relays = doc["facts"]["relays"]
        assert [r["outcome"] for r in relays] == ["registered", "registered"], relays
        assert all(r["rtt_ms"] is not None and r["rtt_ms"] > 0 for r in relays)
        assert doc["facts"]["key_source"] == "interface"
        assert doc["facts"]["interface_exists"] is True
        assert doc["facts"]["listen_port"] == 51820
        assert findings(doc, "clock")[0]["level"] == "ok"
        assert doc["nat"]["behind_nat"] is True
    # symmetric: each relay saw another public port of the same socket
    assert doc_a["nat"]["kind"] == "dependent", doc_a["nat"]
    seen_a = [o["endpoint"] for o in doc_a["nat"]["observed"]]
    assert len(set(seen_a)) == 2
    assert all(ep.startswith(f"{a.router.wan_address}:") for ep in seen_a)
    [nat_a] = findings(doc_a, "nat")
    assert nat_a["level"] == "warn"
    assert "symmetric" in nat_a["summary"]
    assert "forward UDP port 51820" in nat_a["fix"]
    # cone: both relays saw one public address and port
    assert doc_b["nat"]["kind"] == "independent", doc_b["nat"]
    seen_b = {o["endpoint"] for o in doc_b["nat"]["observed"]}
    assert len(seen_b) == 1
    [nat_b] = findings(doc_b, "nat")
    assert nat_b["level"] == "ok"
    assert "cone" in nat_b["summary"]
    # nothing failed (a warns about its NAT and both about their missing agents)
    assert (rc_a, rc_b) == (0, 0), (doc_a["findings"], doc_b["findings"])
    assert findings(doc_a, "agent")[0]["level"] == "warn"

    # the human form says the same, one line per finding
    rc, text = wgrelay(sc, a, "doctor", a.wireguard().name)
    assert rc == 0
    assert any(
        line.startswith("WARN") and "per destination (symmetric)" in line
        for line in text.splitlines()
    ), text

    # --- with the agents: the pair is relayed (symmetric against a cone
    # that filters per port), and the doctor says why and what to change
    sc.start_agent(a)
    sc.start_agent(b)
    assert wait_until(lambda: peer_nat_known(sc, a) and peer_nat_known(sc, b), 25), (
        sc.status(a),
        sc.status(b),
        sc.agent_log(a)[-2000:],
        sc.agent_log(b)[-2000:],
    )
    rc_a, doc_a = doctor_json(sc, a)
    rc_b, doc_b = doctor_json(sc, b)
    for doc in (doc_a, doc_b):
        assert doc["facts"]["key_source"] == "throwaway"  # the agent holds the key's registrations
        assert doc["facts"]["agent"]["agent_running"] is True
        assert findings(doc, "agent")[0]["level"] == "ok"
    assert doc_a["nat"]["kind"] == "dependent"
    assert doc_b["nat"]["kind"] == "independent"
    [peer_a] = findings(doc_a, "peer")
    assert peer_a["subject"] == str(b.wireguard().public_key)
    assert peer_a["data"]["path"] == "relayed"
    assert "our NAT is symmetric" in peer_a["summary"]
    assert "forward UDP port 51820 on our NAT" in peer_a["fix"]
    [peer_b] = findings(doc_b, "peer")
    assert "the peer's NAT is symmetric" in peer_b["summary"]
    assert (rc_a, rc_b) == (0, 0), (doc_a["findings"], doc_b["findings"])
    for f in doc_a["findings"]:  # what a user behind the symmetric NAT reads
        print(f"{f['level']:4}  {f['check']:9} {f['summary']} -> {f['fix']}")
    print(f"doctor test took {time.monotonic() - t0:.1f} s after the testbed was up")
