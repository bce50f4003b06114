"""The doctor's diagnosis on recorded facts, and its two outputs.

The four ``RECORDED_*`` documents are the ``facts`` of ``wgrelay doctor
--json`` from a run of tests/system/test_doctor_ns.py: peer a behind a
symmetric NAT, peer b behind a cone NAT, two relays, first without agents,
then with both agents up (the pair relayed). The other cases are those facts
changed in the one place a case needs (``replace``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from wgrelay import cli
from wgrelay.discovery.registry import KnownRelay
from wgrelay.doctor.diagnose import (
    check_clock,
    check_mtu,
    classify_mapping,
    diagnose,
    exit_code,
    nat_verdict,
)
from wgrelay.doctor.facts import Facts, ProbeOutcome, RelayProbe, facts_from_json, facts_to_json
from wgrelay.doctor.findings import Finding, Level
from wgrelay.doctor.gather import clock_offset, probe_endpoint
from wgrelay.doctor.report import render_lines, report_document
from wgrelay.keys import RelayIdentity
from wgrelay.proto.constants import MappingKind

RECORDED_A_NOAGENT: dict[str, Any] = {
    "agent": {
        "agent_running": False,
        "backend": None,
        "home_relay": None,
        "home_relay_endpoint": None,
        "interface": "wr3e13-a",
        "peers": [],
        "pid": None,
        "relay_enabled": True,
        "standby_relay": None,
        "updated": None,
    },
    "interface": "wr3e13-a",
    "interface_exists": True,
    "key_source": "interface",
    "listen_port": 51820,
    "mtu": 1420,
    "notes": [],
    "relays": [
        {
            "bootstrap": True,
            "clock_offset_s": -0.001,
            "detail": "",
            "endpoint": "203.0.113.10:51821",
            "local": "10.1.0.2:56135",
            "observed": "203.0.113.20:37421",
            "outcome": "registered",
            "public_key": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
            "rtt_ms": 0.234,
        },
        {
            "bootstrap": True,
            "clock_offset_s": -0.001,
            "detail": "",
            "endpoint": "203.0.113.11:51821",
            "local": "10.1.0.2:56135",
            "observed": "203.0.113.20:2886",
            "outcome": "registered",
            "public_key": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
            "rtt_ms": 0.329,
        },
    ],
    "relays_known": 2,
    "wall": 1795667749.3128412,
}

RECORDED_B_NOAGENT: dict[str, Any] = {
    "agent": {
        "agent_running": False,
        "backend": None,
        "home_relay": None,
        "home_relay_endpoint": None,
        "interface": "wr3e13-b",
        "peers": [],
        "pid": None,
        "relay_enabled": True,
        "standby_relay": None,
        "updated": None,
    },
    "interface": "wr3e13-b",
    "interface_exists": True,
    "key_source": "interface",
    "listen_port": 51820,
    "mtu": 1420,
    "notes": [],
    "relays": [
        {
            "bootstrap": True,
            "clock_offset_s": -0.0,
            "detail": "",
            "endpoint": "203.0.113.10:51821",
            "local": "10.2.0.2:40847",
            "observed": "203.0.113.21:40847",
            "outcome": "registered",
            "public_key": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
            "rtt_ms": 0.323,
        },
        {
            "bootstrap": True,
            "clock_offset_s": -0.001,
            "detail": "",
            "endpoint": "203.0.113.11:51821",
            "local": "10.2.0.2:40847",
            "observed": "203.0.113.21:40847",
            "outcome": "registered",
            "public_key": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
            "rtt_ms": 0.318,
        },
    ],
    "relays_known": 2,
    "wall": 1795667749.5403428,
}

RECORDED_A_AGENT: dict[str, Any] = {
    "agent": {
        "agent_running": True,
        "backend": "userspace",
        "home_relay": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
        "home_relay_carrier": "udp",
        "home_relay_endpoint": "203.0.113.11:51821",
        "interface": "wr3e13-a",
        "peers": [
            {
                "candidates": ["203.0.113.21:51820"],
                "direct_endpoint": "203.0.113.21:51820",
                "endpoint": "203.0.113.11:52000",
                "last_upgrade": None,
                "latest_handshake": 1795667750.5372653,
                "nat": {
                    "ours": "dependent",
                    "ours_mapping": "203.0.113.20:51283",
                    "peer": "independent",
                    "peer_mapping": "203.0.113.21:51820",
                },
                "path": "relayed",
                "public_key": "7KZ+FmarlmWmq/YUjmtBn2RBP8clv0rh6qZrHCxtayU=",
                "reason": "via relay g8p/A8aM (session open); direct tried in 2 s",
                "relay": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
                "relay_endpoint": "203.0.113.11:51821",
                "relay_mode": "port",
                "relay_mode_reason": (
                    "port mode: WireGuard talks to the relay at 203.0.113.11:52000"
                ),
                "rtt_ms": None,
                "rtt_source": None,
                "rx_bytes": 156,
                "since": 1795667751,
                "tx_bytes": 180,
                "upgrade_tries": 0,
            }
        ],
        "pid": 27437,
        "relay_enabled": True,
        "standby_relay": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
        "udp_blocked": False,
        "updated": 1795667751.533,
    },
    "interface": "wr3e13-a",
    "interface_exists": True,
    "key_source": "throwaway",
    "listen_port": 51820,
    "mtu": 1420,
    "notes": [],
    "relays": [
        {
            "bootstrap": True,
            "clock_offset_s": -0.001,
            "detail": "",
            "endpoint": "203.0.113.11:51821",
            "local": "10.1.0.2:43112",
            "observed": "203.0.113.20:23265",
            "outcome": "registered",
            "public_key": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
            "rtt_ms": 0.409,
        },
        {
            "bootstrap": True,
            "clock_offset_s": -0.0,
            "detail": "",
            "endpoint": "203.0.113.10:51821",
            "local": "10.1.0.2:43112",
            "observed": "203.0.113.20:51392",
            "outcome": "registered",
            "public_key": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
            "rtt_ms": 0.265,
        },
    ],
    "relays_known": 2,
    "wall": 1795667751.79912,
}

RECORDED_B_AGENT: dict[str, Any] = {
    "agent": {
        "agent_running": True,
        "backend": "userspace",
        "home_relay": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
        "home_relay_carrier": "udp",
        "home_relay_endpoint": "203.0.113.11:51821",
        "interface": "wr3e13-b",
        "peers": [
            {
                "candidates": ["203.0.113.20:51820"],
                "direct_endpoint": "203.0.113.20:51820",
                "endpoint": "203.0.113.11:52001",
                "last_upgrade": None,
                "latest_handshake": 1795667750.53788,
                "nat": {
                    "ours": "independent",
                    "ours_mapping": "203.0.113.21:51820",
                    "peer": "dependent",
                    "peer_mapping": "203.0.113.20:51283",
                },
                "path": "relayed",
                "public_key": "rA8RUr9xynKF0gvGLbqtp7q0uyAcwWAueHCP/qkzwH8=",
                "reason": (
                    "via relay g8p/A8aM (accepted a session from the peer); direct tried in 2 s"
                ),
                "relay": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
                "relay_endpoint": "203.0.113.11:51821",
                "relay_mode": "port",
                "relay_mode_reason": (
                    "port mode: WireGuard talks to the relay at 203.0.113.11:52001"
                ),
                "rtt_ms": None,
                "rtt_source": None,
                "rx_bytes": 180,
                "since": 1795667751,
                "tx_bytes": 272,
                "upgrade_tries": 0,
            }
        ],
        "pid": 27438,
        "relay_enabled": True,
        "standby_relay": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
        "udp_blocked": False,
        "updated": 1795667751.307,
    },
    "interface": "wr3e13-b",
    "interface_exists": True,
    "key_source": "throwaway",
    "listen_port": 51820,
    "mtu": 1420,
    "notes": [],
    "relays": [
        {
            "bootstrap": True,
            "clock_offset_s": -0.001,
            "detail": "",
            "endpoint": "203.0.113.11:51821",
            "local": "10.2.0.2:42194",
            "observed": "203.0.113.21:42194",
            "outcome": "registered",
            "public_key": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=",
            "rtt_ms": 0.211,
        },
        {
            "bootstrap": True,
            "clock_offset_s": -0.0,
            "detail": "",
            "endpoint": "203.0.113.10:51821",
            "local": "10.2.0.2:42194",
            "observed": "203.0.113.21:42194",
            "outcome": "registered",
            "public_key": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=",
            "rtt_ms": 0.31,
        },
    ],
    "relays_known": 2,
    "wall": 1795667752.030642,
}


def recorded(doc: dict[str, Any]) -> Facts:
    return facts_from_json(doc)


def only(findings: list[Finding], check: str) -> Finding:
    [f] = [f for f in findings if f.check == check]
    return f


def with_peer(facts: Facts, **changes: Any) -> Facts:
    """The recorded agent document with its one peer changed."""
    assert facts.agent is not None
    peer = {**facts.agent["peers"][0], **changes}
    return replace(facts, agent={**facts.agent, "peers": [peer]})


def with_nat(facts: Facts, ours: str, theirs: str) -> Facts:
    assert facts.agent is not None
    nat = {**facts.agent["peers"][0]["nat"], "ours": ours, "peer": theirs}
    return with_peer(facts, nat=nat)


# ------------------------------------------------------------ NAT mapping


def test_classify_mapping_is_one_endpoint_for_every_destination() -> None:
    a, b = ("198.51.100.7", 40000), ("198.51.100.7", 40001)
    assert classify_mapping([]) is MappingKind.UNKNOWN
    assert classify_mapping([a]) is MappingKind.UNKNOWN
    assert classify_mapping([a, a, a]) is MappingKind.INDEPENDENT
    assert classify_mapping([a, a, b]) is MappingKind.DEPENDENT
    # another public IP per destination maps per destination as well
    assert classify_mapping([a, ("198.51.100.8", 40000)]) is MappingKind.DEPENDENT


def test_recorded_symmetric_nat_is_named_symmetric_with_the_port_to_forward() -> None:
    facts = recorded(RECORDED_A_NOAGENT)
    findings, verdict = diagnose(facts)
    assert verdict.kind is MappingKind.DEPENDENT
    assert verdict.behind_nat is True
    assert verdict.family == "ipv4"
    nat = only(findings, "nat")
    assert nat.level is Level.WARN
    assert "per destination (symmetric)" in nat.summary
    assert "another public port" in nat.summary
    assert nat.fix == "forward UDP port 51820 to this host on the NAT (or give it a public address)"
    # nothing failed: no agent runs (a warning), the relays answered
    assert only(findings, "agent").level is Level.WARN
    assert only(findings, "udp").level is Level.OK
    assert exit_code(findings) == 0


def test_recorded_cone_nat_is_named_cone() -> None:
    findings, verdict = diagnose(recorded(RECORDED_B_NOAGENT))
    assert verdict.kind is MappingKind.INDEPENDENT
    assert verdict.behind_nat is True
    nat = only(findings, "nat")
    assert nat.level is Level.OK
    assert "endpoint-independent (cone)" in nat.summary
    assert nat.fix is None


def test_one_relay_only_says_unknown_needs_two_relays() -> None:
    facts = recorded(RECORDED_A_NOAGENT)
    findings, verdict = diagnose(replace(facts, relays=facts.relays[:1]))
    assert verdict.kind is MappingKind.UNKNOWN
    nat = only(findings, "nat")
    assert nat.level is Level.WARN
    assert "unknown (needs two relays)" in nat.summary
    assert nat.fix is not None
    assert "add-bootstrap-relay" in nat.fix


def test_relays_that_see_our_own_address_mean_no_nat_even_one_of_them() -> None:
    facts = recorded(RECORDED_B_NOAGENT)
    public = [replace(p, local=p.observed) for p in facts.relays[:1]]
    findings, verdict = diagnose(replace(facts, relays=tuple(public)))
    assert verdict.behind_nat is False
    assert verdict.kind is MappingKind.INDEPENDENT
    assert only(findings, "nat").summary.startswith("no NAT")


def test_relays_that_refuse_a_throwaway_key_leave_the_nat_unknown_and_say_how_to_fix() -> None:
    facts = recorded(RECORDED_A_AGENT)
    refused = tuple(
        replace(p, outcome=ProbeOutcome.NOT_ALLOWED, observed=None) for p in facts.relays
    )
    findings, verdict = diagnose(replace(facts, relays=refused))
    assert verdict.kind is MappingKind.UNKNOWN
    assert all(f.level is Level.OK for f in findings if f.check == "relay")
    nat = only(findings, "nat")
    assert "relays that refuse the probe's key" in nat.summary
    assert nat.fix is not None
    assert "while its agent is stopped" in nat.fix


# ------------------------------------------------------------ peers


def test_recorded_relayed_peer_behind_symmetric_nat_is_told_to_forward_its_port() -> None:
    findings, _ = diagnose(recorded(RECORDED_A_AGENT))
    peer = only(findings, "peer")
    assert peer.level is Level.WARN
    assert peer.subject == "7KZ+FmarlmWmq/YUjmtBn2RBP8clv0rh6qZrHCxtayU="
    assert peer.summary.startswith("peer 7KZ+Fmar..: relayed (port) via 203.0.113.11:51821:")
    assert "our NAT is symmetric" in peer.summary
    assert peer.fix == "forward UDP port 51820 on our NAT to this host"
    assert only(findings, "agent").level is Level.OK
    assert exit_code(findings) == 0


def test_recorded_relayed_peer_behind_cone_nat_blames_the_peers_nat() -> None:
    findings, _ = diagnose(recorded(RECORDED_B_AGENT))
    peer = only(findings, "peer")
    assert "the peer's NAT is symmetric" in peer.summary
    assert peer.fix is not None
    assert "forward UDP port 51820 on our NAT" in peer.fix


def test_both_nats_symmetric_says_direct_is_impossible() -> None:
    facts = with_nat(recorded(RECORDED_A_AGENT), "dependent", "dependent")
    peer = only(diagnose(facts)[0], "peer")
    assert "both NATs are symmetric (map per destination): direct is impossible" in peer.summary
    assert peer.fix is not None
    assert peer.fix.startswith("forward UDP port 51820 on one side")


def test_neither_nat_symmetric_reports_the_last_try() -> None:
    facts = with_nat(recorded(RECORDED_A_AGENT), "independent", "independent")
    facts = with_peer(facts, last_upgrade="12:00:01: failed (no handshake in 0.8 s)")
    peer = only(diagnose(facts)[0], "peer")
    assert "no direct try has worked yet (last try: 12:00:01: failed" in peer.summary


def test_direct_peer_is_ok_and_a_stale_handshake_warns() -> None:
    facts = with_peer(recorded(RECORDED_A_AGENT), path="direct", reason="handshake on candidate")
    peer = only(diagnose(facts)[0], "peer")
    assert peer.level is Level.OK
    assert peer.summary == "peer 7KZ+Fmar..: direct to 203.0.113.21:51820 (handshake on candidate)"
    stale = with_peer(facts, latest_handshake=facts.wall - 600)
    assert only(diagnose(stale)[0], "peer").level is Level.WARN


def test_peer_without_path_and_no_relay_answering_fails_as_udp_blocked() -> None:
    facts = recorded(RECORDED_A_AGENT)
    silent = tuple(
        replace(p, outcome=ProbeOutcome.TIMEOUT, rtt_ms=None, observed=None, clock_offset_s=None)
        for p in facts.relays
    )
    facts = with_peer(replace(facts, relays=silent), path="relay-pending", reason="no relay")
    findings, _ = diagnose(facts)
    udp = only(findings, "udp")
    assert udp.level is Level.FAIL
    assert udp.summary.startswith("UDP to relays blocked")
    assert udp.fix is not None
    assert "51821" in udp.fix
    peer = only(findings, "peer")
    assert peer.level is Level.FAIL
    assert "UDP to relays blocked" in peer.summary
    assert only(findings, "clock").level is Level.WARN  # nothing to compare with
    assert exit_code(findings) == 1


def test_relay_fallback_disabled_and_missing_interface_are_reported() -> None:
    facts = recorded(RECORDED_A_AGENT)
    assert facts.agent is not None
    facts = replace(facts, agent={**facts.agent, "relay_enabled": False}, interface_exists=False)
    findings, _ = diagnose(facts)
    assert only(findings, "interface").level is Level.FAIL
    disabled = [f for f in findings if f.check == "agent" and "disabled" in f.summary]
    assert disabled[0].fix == f"wgrelay configure-relay --enable {facts.interface}"


# ------------------------------------------------------------ relays, clock, MTU


@pytest.mark.parametrize(
    ("outcome", "level", "words"),
    [
        (ProbeOutcome.REFUSED, Level.FAIL, "nothing listens on UDP port 51821"),
        (ProbeOutcome.TIMEOUT, Level.FAIL, "no answer"),
        (ProbeOutcome.UNREACHABLE, Level.FAIL, "cannot send"),
        (ProbeOutcome.BAD_KEY, Level.FAIL, "the key we know for it is wrong"),
    ],
)
def test_each_failed_probe_says_why_and_a_learned_relay_only_warns(
    outcome: ProbeOutcome, level: Level, words: str
) -> None:
    facts = recorded(RECORDED_B_NOAGENT)
    bad = replace(facts.relays[0], outcome=outcome, observed=None, rtt_ms=None)
    findings, _ = diagnose(replace(facts, relays=(bad, facts.relays[1])))
    [line] = [f for f in findings if f.subject == bad.key and f.check == "relay"]
    assert line.level is level
    assert words in line.summary
    assert line.fix
    learned = replace(bad, bootstrap=False)
    findings, _ = diagnose(replace(facts, relays=(learned, facts.relays[1])))
    [line] = [f for f in findings if f.subject == bad.key and f.check == "relay"]
    assert line.level is Level.WARN


def test_a_relay_refusing_the_interfaces_own_key_fails() -> None:
    facts = recorded(RECORDED_B_NOAGENT)  # probed with the interface's key
    refused = replace(facts.relays[0], outcome=ProbeOutcome.NOT_ALLOWED, observed=None)
    findings, _ = diagnose(replace(facts, relays=(refused, facts.relays[1])))
    [line] = [f for f in findings if f.subject == refused.key and f.check == "relay"]
    assert line.level is Level.FAIL
    assert "refuses wr3e13-b's key" in line.summary


def test_clock_offsets_ok_warn_fail_and_the_relay_whose_clock_is_off() -> None:
    facts = recorded(RECORDED_B_NOAGENT)

    def offsets(*values: float) -> Facts:
        relays = tuple(
            replace(p, clock_offset_s=v) for p, v in zip(facts.relays, values, strict=True)
        )
        return replace(facts, relays=relays)

    assert check_clock(offsets(0.2, 0.3))[0].level is Level.OK
    warn = check_clock(offsets(30.0, 30.2))[0]
    assert warn.level is Level.WARN
    assert "30.1 s behind the relays'" in warn.summary
    fail = check_clock(offsets(-400.0, -400.0))[0]
    assert fail.level is Level.FAIL
    assert "400 s ahead of" in fail.summary
    # three relays, one off: the others agree with us, that relay is told about
    three = replace(facts, relays=(*facts.relays, replace(facts.relays[0], key="X" * 44)))
    relays = tuple(
        replace(p, clock_offset_s=v) for p, v in zip(three.relays, (0.0, 0.1, 90.0), strict=True)
    )
    found = check_clock(replace(three, relays=relays))
    assert found[0].level is Level.OK
    assert found[1].subject == "X" * 44
    assert "+90 s off the others'" in found[1].summary


def test_clock_offset_is_the_median_reply_less_half_a_round_trip() -> None:
    # the relay stamped each reply 5 ms (half the 10 ms RTT) before it arrived
    stamps = [(1000.000, 1000.005), (1001.000, 1001.005), (1003.0, 1002.0)]
    assert clock_offset(stamps, 0.010) == 0.0
    assert clock_offset([], 0.010) is None


def test_mtu_advice_per_family_of_the_relay_paths() -> None:
    facts = recorded(RECORDED_B_NOAGENT)
    [ok] = check_mtu(facts)
    assert ok.level is Level.OK
    assert ok.summary == (
        "MTU 1420: relayed over IPv4 a full packet is at most 1490 bytes, fits a 1500-byte path"
    )
    v6 = replace(facts.relays[0], endpoint=("2001:db8::10", 51821))
    [warn] = check_mtu(replace(facts, relays=(v6,)))
    assert warn.level is Level.WARN
    assert "port mode fits (1500 bytes) but framed relaying sends 1510" in warn.summary
    assert warn.fix is not None
    assert "1410 or less" in warn.fix
    [big] = check_mtu(replace(facts, mtu=1500))
    assert "even in port mode" in big.summary
    [assumed] = check_mtu(replace(facts, mtu=None))
    assert "(assumed: WireGuard's default)" in assumed.summary


def test_probe_endpoint_is_the_first_with_a_route() -> None:
    relay = KnownRelay(
        RelayIdentity.generate().public, (("2001:db8::10", 51821), ("203.0.113.10", 51821))
    )
    assert probe_endpoint(relay, lambda ep: ":" not in ep[0]) == ("203.0.113.10", 51821)
    assert probe_endpoint(relay, lambda _ep: False) == ("2001:db8::10", 51821)


def test_no_relays_known_fails_with_the_fix() -> None:
    facts = Facts(interface=None, wall=0.0, relays_known=0)
    findings, verdict = diagnose(facts)
    assert [f.check for f in findings] == ["relays", "mtu"]
    assert findings[0].level is Level.FAIL
    assert verdict.kind is MappingKind.UNKNOWN
    assert exit_code(findings) == 1


# ------------------------------------------------------------ outputs


def test_human_output_is_one_line_per_finding() -> None:
    facts = recorded(RECORDED_A_AGENT)
    findings, _ = diagnose(facts)
    lines = render_lines(findings).splitlines()
    assert len(lines) == len(findings)
    nat = next(line for line in lines if " nat " in line)
    assert nat.startswith("WARN  nat       NAT mapping per destination (symmetric)")
    assert nat.endswith("-> fix: forward UDP port 51820 to this host on the NAT "
                        "(or give it a public address)")  # fmt: skip
    assert render_lines([], ["relay X: cannot probe"]) == "note  relay X: cannot probe\n"


def test_json_document_has_the_documented_keys() -> None:
    facts = recorded(RECORDED_A_NOAGENT)
    findings, verdict = diagnose(facts)
    doc = json.loads(json.dumps(report_document(facts, findings, verdict)))
    assert set(doc) == {"version", "interface", "ok", "counts", "findings", "nat", "facts"}
    assert doc["version"] == 1
    assert doc["ok"] is True
    assert doc["counts"] == {
        "ok": sum(f.level is Level.OK for f in findings),
        "warn": sum(f.level is Level.WARN for f in findings),
        "fail": 0,
    }
    assert doc["nat"]["kind"] == "dependent"
    assert doc["nat"]["observed"] == [
        {"relay": "hlhsEh++nz68xUiGUSLmtx7otbKulgAsmGFZ2iFTZVM=", "endpoint": "203.0.113.20:37421"},
        {"relay": "g8p/A8aMKgainTbQT0i61ZY2YyLmy2439LNsLVLkazM=", "endpoint": "203.0.113.20:2886"},
    ]
    for f in doc["findings"]:
        assert set(f) == {"check", "level", "subject", "summary", "fix", "data"}
    assert doc["facts"] == RECORDED_A_NOAGENT  # the facts as recorded, again
    assert facts_to_json(facts) == RECORDED_A_NOAGENT


def test_bad_recorded_facts_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid ProbeOutcome"):
        facts_from_json({**RECORDED_A_NOAGENT, "relays": [
            {**RECORDED_A_NOAGENT["relays"][0], "outcome": "maybe"}]})  # fmt: skip
    with pytest.raises(ValueError, match="not a number"):
        facts_from_json({**RECORDED_A_NOAGENT, "relays": [
            {**RECORDED_A_NOAGENT["relays"][0], "rtt_ms": "fast"}]})  # fmt: skip


def test_verdict_prefers_ipv4_where_nats_are() -> None:
    facts = recorded(RECORDED_A_NOAGENT)
    v6 = RelayProbe("Y" * 44, ("2001:db8::10", 51821), True, ProbeOutcome.REGISTERED,
                    observed=("2001:db8::2", 4000), local=("2001:db8::2", 4000))  # fmt: skip
    verdict = nat_verdict(replace(facts, relays=(*facts.relays, v6)))
    assert verdict.family == "ipv4"
    assert verdict.kind is MappingKind.DEPENDENT


# ------------------------------------------------------------ the command


def test_cli_doctor_without_relays_exits_1_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["doctor", "--state-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL  relays    no relays known")
    assert cli.main(["doctor", "--json", "--state-dir", str(tmp_path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["nat"]["kind"] == "unknown"


def test_cli_doctor_bad_interface_name_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["doctor", "bad/name", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "wgrelay: error: invalid interface name 'bad/name'\n"


def test_an_agent_that_found_udp_blocked_is_told_about() -> None:
    facts = recorded(RECORDED_A_AGENT)
    assert facts.agent is not None
    assert only(diagnose(facts)[0], "peer")  # recorded: UDP worked, no such line
    assert not [f for f in diagnose(facts)[0] if "UDP to relays blocked" in f.summary]
    blocked = replace(
        facts, agent={**facts.agent, "udp_blocked": True, "home_relay_carrier": "tcp"}
    )
    [line] = [f for f in diagnose(blocked)[0] if "found UDP to relays blocked" in f.summary]
    assert line.level is Level.WARN
    assert "over TCP" in line.summary
