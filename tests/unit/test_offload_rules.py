"""The nftables JSON documents of the kernel offload, and reading its counters back.

Pure functions: no root, no libnftables. That the kernel does what these
documents say is tests/system/test_offload_ns.py's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wgrelay.relay import nft
from wgrelay.relay.offload import KernelOffload, read_sysctl
from wgrelay.relay.offload_rules import (
    IP_FRAG_MASK,
    LIMIT_BURST_BYTES,
    OffloadPath,
    OffloadUnavailable,
    PathCounters,
    Rewrite,
    dropping_forward_chains,
    parse_counters,
    path_commands,
    remove_commands,
    resolve,
    table_commands,
)

T = {"family": "inet", "table": "wgrelay"}
PATH4 = OffloadPath(
    path_id=7,
    family=4,
    a_port=40001,
    a_addr=("198.51.100.10", 51820),
    b_port=40002,
    b_addr=("198.51.100.20", 51821),
    max_bytes_per_s=125_000,
)
RW4 = Rewrite(PATH4, 4, "198.51.100.10", "198.51.100.20", "203.0.113.1", "203.0.113.2")
PATH6 = OffloadPath(
    path_id=8,
    family=6,
    a_port=40003,
    a_addr=("2001:db8::a", 51820),
    b_port=40004,
    b_addr=("2001:db8::b", 51821),
    max_bytes_per_s=0,
)
RW6 = Rewrite(PATH6, 6, "2001:db8::a", "2001:db8::b", "2001:db8::1", "2001:db8::1")


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _mangle(protocol: str, field: str, value: str | int) -> dict[str, Any]:
    return {"mangle": {"key": _payload(protocol, field), "value": value}}


COUNTER = {"counter": {"packets": 0, "bytes": 0}}


# ---------------------------------------------------------------- documents


def test_table_is_deleted_and_recreated_in_one_document() -> None:
    cmds = table_commands("wgrelay")
    table = {"family": "inet", "name": "wgrelay"}
    assert cmds[:3] == [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
    ]
    maps = {c["add"]["map"]["name"]: c["add"]["map"] for c in cmds if "map" in c.get("add", {})}
    assert maps["pre4"]["type"] == ["ipv4_addr", "inet_service", "inet_service"]
    assert maps["post6"]["type"] == ["ipv6_addr", "inet_service", "ipv6_addr", "inet_service"]
    assert {m["map"] for m in maps.values()} == {"verdict"}
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert chains == [
        {**T, "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -300,
         "policy": "accept"},
        {**T, "name": "postrouting", "type": "filter", "hook": "postrouting", "prio": 100,
         "policy": "accept"},
    ]  # fmt: skip
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert [(r["chain"], r["expr"][1]["vmap"]["data"]) for r in rules] == [
        ("prerouting", "@pre4"),
        ("postrouting", "@post4"),
        ("prerouting", "@pre6"),
        ("postrouting", "@post6"),
    ]
    # Only whole IPv4 packets and IPv6 packets without extension headers.
    assert rules[0]["expr"][0] == {
        "match": {"op": "==", "left": {"&": [_payload("ip", "frag-off"), IP_FRAG_MASK]}, "right": 0}
    }
    assert rules[2]["expr"][0] == {
        "match": {"op": "==", "left": _payload("ip6", "nexthdr"), "right": "udp"}
    }
    assert rules[0]["expr"][1]["vmap"]["key"] == {
        "concat": [_payload("ip", "saddr"), _payload("udp", "sport"), _payload("udp", "dport")]
    }
    assert rules[3]["expr"][1]["vmap"]["key"] == {
        "concat": [
            _payload("ip6", "saddr"),
            _payload("udp", "sport"),
            _payload("ip6", "daddr"),
            _payload("udp", "dport"),
        ]
    }


def test_path_document_ipv4_with_limit() -> None:
    limit = {
        "limit": {
            "rate": 125_000,
            "rate_unit": "bytes",
            "per": "second",
            "burst": LIMIT_BURST_BYTES,
            "burst_unit": "bytes",
            "inv": True,
        }
    }
    drop_rule = [limit, COUNTER, {"drop": None}]
    assert path_commands(RW4, "wgrelay") == [
        {"add": {"chain": {**T, "name": "p7_ab_in"}}},
        {"add": {"chain": {**T, "name": "p7_ab_out"}}},
        {"add": {"rule": {**T, "chain": "p7_ab_in", "expr": drop_rule}}},
        {"add": {"rule": {**T, "chain": "p7_ab_in", "expr": [
            COUNTER, {"notrack": None},
            _mangle("ip", "daddr", "198.51.100.20"), _mangle("udp", "dport", 51821),
        ]}}},
        {"add": {"rule": {**T, "chain": "p7_ab_out", "expr": [
            COUNTER, _mangle("ip", "saddr", "203.0.113.2"), _mangle("udp", "sport", 40002),
        ]}}},
        {"add": {"chain": {**T, "name": "p7_ba_in"}}},
        {"add": {"chain": {**T, "name": "p7_ba_out"}}},
        {"add": {"rule": {**T, "chain": "p7_ba_in", "expr": drop_rule}}},
        {"add": {"rule": {**T, "chain": "p7_ba_in", "expr": [
            COUNTER, {"notrack": None},
            _mangle("ip", "daddr", "198.51.100.10"), _mangle("udp", "dport", 51820),
        ]}}},
        {"add": {"rule": {**T, "chain": "p7_ba_out", "expr": [
            COUNTER, _mangle("ip", "saddr", "203.0.113.1"), _mangle("udp", "sport", 40001),
        ]}}},
        {"add": {"element": {**T, "name": "pre4", "elem": [
            [{"concat": ["198.51.100.10", 51820, 40001]}, {"jump": {"target": "p7_ab_in"}}],
            [{"concat": ["198.51.100.20", 51821, 40002]}, {"jump": {"target": "p7_ba_in"}}],
        ]}}},
        {"add": {"element": {**T, "name": "post4", "elem": [
            [{"concat": ["198.51.100.10", 51820, "198.51.100.20", 51821]},
             {"jump": {"target": "p7_ab_out"}}],
            [{"concat": ["198.51.100.20", 51821, "198.51.100.10", 51820]},
             {"jump": {"target": "p7_ba_out"}}],
        ]}}},
    ]  # fmt: skip


def test_path_document_ipv6_unlimited() -> None:
    cmds = path_commands(RW6, "wgrelay")
    rules = [c["add"]["rule"] for c in cmds if "rule" in c["add"]]
    assert not [r for r in rules if any("limit" in e for e in r["expr"])]
    assert rules[0] == {**T, "chain": "p8_ab_in", "expr": [
        COUNTER, {"notrack": None},
        _mangle("ip6", "daddr", "2001:db8::b"), _mangle("udp", "dport", 51821),
    ]}  # fmt: skip
    assert rules[1]["expr"][1] == _mangle("ip6", "saddr", "2001:db8::1")
    maps = [c["add"]["element"]["name"] for c in cmds if "element" in c["add"]]
    assert maps == ["pre6", "post6"]


def test_remove_document_deletes_entries_before_chains() -> None:
    assert remove_commands(RW4, "wgrelay") == [
        {"delete": {"element": {**T, "name": "pre4", "elem": [
            {"concat": ["198.51.100.10", 51820, 40001]},
            {"concat": ["198.51.100.20", 51821, 40002]},
        ]}}},
        {"delete": {"element": {**T, "name": "post4", "elem": [
            {"concat": ["198.51.100.10", 51820, "198.51.100.20", 51821]},
            {"concat": ["198.51.100.20", 51821, "198.51.100.10", 51820]},
        ]}}},
        *[
            cmd
            for name in ("p7_ab_in", "p7_ab_out", "p7_ba_in", "p7_ba_out")
            for cmd in ({"flush": {"chain": {**T, "name": name}}},
                        {"delete": {"chain": {**T, "name": name}}})
        ],
    ]  # fmt: skip


# ---------------------------------------------------------------- resolving paths


def test_resolve_uses_given_relay_addresses() -> None:
    assert resolve(PATH4, "203.0.113.1", "203.0.113.2") == RW4


def test_resolve_defaults_to_the_routed_source() -> None:
    path = OffloadPath(1, 4, 40001, ("127.0.0.1", 1000), 40002, ("127.0.0.2", 1001), 0)
    rw = resolve(path)
    assert (rw.a_local, rw.b_local) == ("127.0.0.1", "127.0.0.1")


def test_resolve_treats_ipv4_mapped_addresses_as_ipv4() -> None:
    path = OffloadPath(1, 6, 40001, ("::ffff:198.51.100.10", 1), 40002, ("198.51.100.20", 2), 0)
    rw = resolve(path, "::ffff:203.0.113.1", "203.0.113.1")
    assert (rw.family, rw.a_ip, rw.a_local) == (4, "198.51.100.10", "203.0.113.1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"b_addr": ("2001:db8::b", 51821)}, "path 7 mixes families"),
        ({"family": 6}, "says IPv6 but A is 198.51.100.10"),
        ({"family": 5}, "family must be 4 or 6"),
        ({"a_port": 0}, "a_port must be 1-65535, not 0"),
        ({"b_addr": ("198.51.100.20", 70000)}, "B's port must be 1-65535"),
        ({"max_bytes_per_s": -1}, "max_bytes_per_s must not be negative"),
        ({"a_addr": ("not an address", 1)}, "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_resolve_refuses_unusable_paths(change: dict[str, Any], message: str) -> None:
    fields = {f: getattr(PATH4, f) for f in OffloadPath.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        resolve(OffloadPath(**{**fields, **change}), "203.0.113.1", "203.0.113.2")


def test_resolve_refuses_a_relay_address_of_the_other_family() -> None:
    with pytest.raises(ValueError, match="b_local 2001:db8::1 is not IPv4"):
        resolve(PATH4, "203.0.113.1", "2001:db8::1")


# ---------------------------------------------------------------- reading back


def _rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"rule": {**T, "chain": chain, "handle": 1, "expr": list(expr)}}


def _count(packets: int, nbytes: int) -> dict[str, Any]:
    return {"counter": {"packets": packets, "bytes": nbytes}}


LIMIT = {"limit": {"rate": 1000, "burst": 16, "per": "second", "inv": True,
                   "rate_unit": "bytes", "burst_unit": "kbytes"}}  # fmt: skip
MANGLE = _mangle("ip", "daddr", "198.51.100.20")

LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "wgrelay", "handle": 1}},
        {"chain": {**T, "name": "p7_ab_in", "handle": 2}},
        _rule("prerouting", {"vmap": {"key": {}, "data": "@pre4"}}),
        _rule("p7_ab_in", LIMIT, _count(4, 4000), {"drop": None}),
        _rule("p7_ab_in", _count(10, 1280), {"notrack": None}, MANGLE),
        _rule("p7_ab_out", _count(9, 1152), MANGLE),
        _rule("p7_ba_in", LIMIT, _count(1, 100), {"drop": None}),
        _rule("p7_ba_in", _count(5, 640), {"notrack": None}, MANGLE),
        _rule("p7_ba_out", _count(5, 640), MANGLE),
        _rule("p12_ab_in", _count(3, 300), {"notrack": None}, MANGLE),
        _rule("p12_ab_out", _count(3, 300), MANGLE),
        _rule("p12_ba_in", _count(0, 0), {"notrack": None}, MANGLE),
        _rule("p12_ba_out", _count(0, 0), MANGLE),
        _rule("someone_elses", _count(99, 99)),
    ]
}


def test_counters_parsed_from_a_listing() -> None:
    assert parse_counters(LISTING) == {
        7: PathCounters(
            ab_packets=9,
            ab_bytes=1152,
            ba_packets=5,
            ba_bytes=640,
            dropped_packets=5,
            unrouted_packets=1,
        ),
        12: PathCounters(ab_packets=3, ab_bytes=300, ba_packets=0, ba_bytes=0, dropped_packets=0),
    }


def test_counters_of_an_empty_table() -> None:
    assert parse_counters({"nftables": [{"table": {"family": "inet", "name": "x"}}]}) == {}
    assert parse_counters({}) == {}


def test_forward_chains_that_drop_by_default_are_found() -> None:
    listing = {
        "nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD",
                       "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd",
                       "hook": "forward", "policy": "accept"}},
            {"chain": {"family": "inet", "table": "fw", "name": "in",
                       "hook": "input", "policy": "drop"}},
            {"chain": {"family": "bridge", "table": "br", "name": "fwd",
                       "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "wgrelay", "name": "f",
                       "hook": "forward", "policy": "drop"}},
        ]
    }  # fmt: skip
    assert dropping_forward_chains(listing, "wgrelay") == ["ip filter FORWARD"]


# ---------------------------------------------------------------- host settings


def _sysctls(root: Path, ipv4: str, ipv6: str | None) -> Path:
    (root / "net/ipv4").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text(ipv4 + "\n")
    if ipv6 is not None:
        (root / "net/ipv6/conf/all").mkdir(parents=True)
        (root / "net/ipv6/conf/all/forwarding").write_text(ipv6 + "\n")
    return root


def test_read_sysctl(tmp_path: Path) -> None:
    root = _sysctls(tmp_path, "1", None)
    assert read_sysctl("net.ipv4.ip_forward", root) == "1"
    assert read_sysctl("net.ipv6.conf.all.forwarding", root) is None


def test_open_refuses_without_ipv4_forwarding_and_says_how(tmp_path: Path) -> None:
    root = _sysctls(tmp_path, "0", "1")
    with pytest.raises(OffloadUnavailable) as refused:
        KernelOffload.open(sysctl_root=root)
    message = str(refused.value)
    assert "needs net.ipv4.ip_forward=1 (is 0)" in message
    assert "'sysctl -w net.ipv4.ip_forward=1'" in message
    assert "\n" not in message
    assert (root / "net/ipv4/ip_forward").read_text() == "0\n"  # never changed


def test_nft_errors_become_one_line() -> None:
    text = (
        "internal:0:0-0: Error: Could not process rule: No such file or directory\n"
        "add rule inet wgrelay p7_ab_in counter\n"
        "                      ^^^^^^^^\n"
    )
    assert nft.one_line(text) == (
        "Error: Could not process rule: No such file or directory"
        " | add rule inet wgrelay p7_ab_in counter"
    )
