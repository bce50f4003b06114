"""``status --watch`` rendering and rates, and the agent's metric families, on
recorded status documents (the pure halves of mesh/status_watch.py and
mesh/metrics.py; the running agent is tests/integration/test_agent_metrics.py)."""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from tests.metrics_text import samples
from wgrelay.client.proxy import ProxyCounters
from wgrelay.mesh.metrics import AgentSnapshot, LinkFacts, RelayFacts, agent_families
from wgrelay.mesh.status_watch import WatchRates, render_frame, watch, watch_interval

NOW = 1_700_000_100.0
PEER_R = "DZEeUGaMwewEOTCuMvdN4knTEibvjbqqy4a2vHr+ljA="
PEER_D = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdTn3dVEo="
RELAY = "B61B/YDzHzDQJViZaWZITopb4ASzmL4XFG64KdT2TzU="


def recorded(updated: float = NOW - 2, rx: int = 10_000, tx: int = 2_000) -> dict[str, Any]:
    """What collect_status returned for an agent with a relayed and a direct peer."""
    return {
        "interfaces": [
            {
                "interface": "wg0",
                "backend": "kernel",
                "agent_running": True,
                "pid": 4242,
                "relay_enabled": True,
                "home_relay": RELAY,
                "home_relay_endpoint": "198.18.0.1:51821",
                "standby_relay": None,
                "updated": updated,
                "peers": [
                    {
                        "public_key": PEER_R,
                        "path": "relayed",
                        "endpoint": "198.18.0.1:52001",
                        "direct_endpoint": "203.0.113.7:51820",
                        "relay": RELAY,
                        "relay_endpoint": "198.18.0.1:51821",
                        "relay_mode": "port",
                        "latest_handshake": NOW - 3,
                        "rtt_ms": 42.5,
                        "rx_bytes": rx,
                        "tx_bytes": tx,
                        "reason": "relayed (via relay B61B/YDz..)",
                        "since": NOW - 60,
                        "nat": {"ours": "dependent", "peer": "independent"},
                        "upgrade_tries": 3,
                    },
                    {
                        "public_key": PEER_D,
                        "path": "direct",
                        "endpoint": "192.0.2.8:51820",
                        "direct_endpoint": "192.0.2.8:51820",
                        "relay": None,
                        "relay_endpoint": None,
                        "latest_handshake": None,
                        "rtt_ms": None,
                        "rx_bytes": 0,
                        "tx_bytes": 0,
                        "reason": "direct",
                        "since": NOW - 600,
                        "nat": {"ours": "unknown", "peer": "unknown"},
                        "upgrade_tries": 0,
                    },
                ],
            }
        ]
    }


def peer_line(frame: str, key: str) -> str:
    return next(ln for ln in frame.splitlines() if key[:10] in ln)


def test_rates_come_from_two_versions_of_the_document() -> None:
    rates = WatchRates()
    rates.update(recorded())
    assert rates.rates == {}  # one version: no rate yet
    later = recorded(updated=NOW + 3, rx=10_000 + 5_000, tx=2_000 + 500)
    rates.update(later)
    assert rates.rates[("wg0", PEER_R)] == (1000.0, 100.0)  # over the agent's 5 s
    assert rates.rates[("wg0", PEER_D)] == (0.0, 0.0)
    rates.update(later)  # the same version at our next refresh: the rate stays
    assert rates.rates[("wg0", PEER_R)] == (1000.0, 100.0)
    restarted = recorded(updated=NOW + 8, rx=100, tx=50)
    rates.update(restarted)  # counters went back (peer re-added): no rate
    assert ("wg0", PEER_R) not in rates.rates
    gone = recorded(updated=NOW + 9)
    gone["interfaces"][0]["peers"] = []
    rates.update(gone)
    assert rates.rates == {}


def test_a_frame_shows_path_relay_mode_handshake_age_and_rates() -> None:
    rates = WatchRates()
    rates.update(recorded())
    rates.update(recorded(updated=NOW + 3, rx=10_000 + 5_000, tx=2_000 + 500))
    frame = render_frame(recorded(updated=NOW + 3, rx=15_000, tx=2_500), rates, NOW, interval_s=1.0)
    assert "every 1s" in frame
    assert f"wg0: agent running; home relay {RELAY[:8]}.. at 198.18.0.1:51821" in frame
    line = peer_line(frame, PEER_R)
    assert "relayed (port)" in line
    assert f"{RELAY[:8]}.. 198.18.0.1:51821" in line
    assert " 3s " in line  # handshake age against the frame's clock
    assert "8.0 kbit/s" in line  # 1000 B/s received
    assert "800 bit/s" in line  # 100 B/s sent
    assert "14.6KiB/2.4KiB" in line
    direct = peer_line(frame, PEER_D)
    assert "direct" in direct
    assert "192.0.2.8:51820" in direct
    assert "never" in direct


def test_a_frame_without_agents_says_so() -> None:
    frame = render_frame({"interfaces": []}, WatchRates(), NOW, 2.0)
    assert "no agent has written a status file" in frame
    stopped = recorded()
    stopped["interfaces"][0]["agent_running"] = False
    stopped["interfaces"][0]["peers"] = []
    frame = render_frame(stopped, WatchRates(), NOW, 2.0)
    assert "wg0: agent NOT running" in frame
    assert "(no peers)" in frame


def test_watch_prints_plain_frames_when_not_a_terminal_and_ends_on_ctrl_c(
    tmp_path: Path,
) -> None:
    doc = recorded()["interfaces"][0]
    doc["pid"] = os.getpid()  # a live process: the agent counts as running
    (tmp_path / "status-wg0.json").write_text(json.dumps(doc))
    ticks = iter([NOW, NOW, NOW + 1, NOW + 1])

    def clock() -> float:
        t = next(ticks, None)
        if t is None:
            raise KeyboardInterrupt  # Ctrl-C during the third frame
        return t

    out = io.StringIO()
    assert watch(tmp_path, "wg0", 0.1, out=out, clock=clock) == 0
    text = out.getvalue()
    assert text.count("--- ") == 2
    assert text.count("wg0: agent running") == 2
    assert "\x1b" not in text


@pytest.mark.parametrize("bad", ["0", "0.05", "-1", "inf", "nan", "soon"])
def test_interval_must_be_a_sensible_number_of_seconds(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        watch_interval(bad)
    assert watch_interval("0.5") == 0.5


class _Families(Collector):
    def __init__(self, snap: AgentSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Any:
        return agent_families(self.snap)


def exposition(snap: AgentSnapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(snap))
    return generate_latest(registry).decode()


def snapshot(status: dict[str, Any]) -> AgentSnapshot:
    iface = copy.deepcopy(status["interfaces"][0])
    return AgentSnapshot(
        status=iface,
        wall=NOW,
        relays=[
            RelayFacts(RELAY, "198.18.0.1:51821", 30.0, 0, 7, "home", LinkFacts(True, 1, 9, 8, 1)),
            RelayFacts("other=", "198.18.0.2:51821", None, 2, 0, "other", None),
        ],
        proxies=[(PEER_R, ProxyCounters(to_relay_packets=5, to_relay_bytes=700, held=2))],
        frames_dropped=4,
        receipts={"signed": 6, "trimmed": 1, "bytes": 9000, "refused_old_request": 2},
    )


def test_agent_families_turn_the_status_document_into_series() -> None:
    text = exposition(snapshot(recorded()))
    r = {"interface": "wg0", "peer": PEER_R}
    d = {"interface": "wg0", "peer": PEER_D}
    path = {(lab["peer"], lab["path"]): v for lab, v in samples(text, "wgrelay_agent_peer_path")}
    assert path[(PEER_R, "relayed")] == 1.0
    assert path[(PEER_D, "direct")] == 1.0
    assert sum(path.values()) == 2.0
    assert samples(text, "wgrelay_agent_peer_relay_info") == [
        ({**r, "relay": RELAY, "relay_endpoint": "198.18.0.1:51821", "mode": "port"}, 1.0)
    ]
    # a handshake 3 s before the snapshot; none for the peer that never had one
    assert samples(text, "wgrelay_agent_peer_handshake_age_seconds") == [(r, 3.0)]
    assert samples(text, "wgrelay_agent_peer_rtt_seconds") == [(r, 0.0425)]
    assert samples(text, "wgrelay_agent_peer_received_bytes_total") == [(r, 10000.0), (d, 0.0)]
    assert samples(text, "wgrelay_agent_peer_upgrade_attempts_total") == [(r, 3.0), (d, 0.0)]
    assert ({**r, "ours": "dependent", "theirs": "independent"}, 1.0) in samples(
        text, "wgrelay_agent_peer_nat_info"
    )
    relay = {"interface": "wg0", "relay": RELAY, "endpoint": "198.18.0.1:51821"}
    other = {"interface": "wg0", "relay": "other=", "endpoint": "198.18.0.2:51821"}
    assert samples(text, "wgrelay_agent_relay_rtt_seconds") == [(relay, 0.03)]
    assert samples(text, "wgrelay_agent_relay_consecutive_failures") == [(relay, 0.0), (other, 2.0)]
    # only relays with a link have link series
    assert samples(text, "wgrelay_agent_relay_registered") == [({**relay, "role": "home"}, 1.0)]
    assert samples(text, "wgrelay_agent_relay_retransmits_total") == [(relay, 1.0)]
    drops = {lab["reason"]: v for lab, v in samples(text, "wgrelay_agent_proxy_drops_total")}
    assert drops == {"no_route": 0.0, "foreign_source": 0.0, "held": 2.0}
    assert samples(text, "wgrelay_agent_relay_frames_dropped_total") == [
        ({"interface": "wg0"}, 4.0)
    ]
    # receipts (credits): a relay claiming more than we saw shows as trimmed
    outcomes = {lab["outcome"]: v for lab, v in samples(text, "wgrelay_agent_receipts_total")}
    assert outcomes == {"signed": 6.0, "trimmed": 1.0, "old_request": 2.0}
    assert samples(text, "wgrelay_agent_receipt_bytes_total") == [({"interface": "wg0"}, 9000.0)]
