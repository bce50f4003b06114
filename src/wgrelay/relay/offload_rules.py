"""The nftables documents of the kernel offload, and the paths they rewrite.

Pure functions (no netlink, no root): the JSON commands that create the
relay's table and add or remove one session's path, the parsing of a listing
back into per-path counters, and the resolution of a path's addresses. The
design and why this hook: offload.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from wgrelay.errors import WgRelayError

FAMILY = "inet"
PRE_CHAIN = "prerouting"
POST_CHAIN = "postrouting"
PRE_PRIORITY = -300
"""raw: before conntrack (-200), so ``notrack`` keeps the session out of it."""
POST_PRIORITY = 100
"""srcnat: the last word on the source, after the filter chains saw the packet."""

LIMIT_BURST_BYTES = 16384
"""On top of the kernel's one-second bucket; more than any (jumbo) datagram."""

IP_FRAG_MASK = 0x3FFF
"""IPv4 more-fragments flag and fragment offset: zero for an unfragmented packet."""

Addr = tuple[str, int]

_CHAIN_NAME = re.compile(r"^p(\d+)_(ab|ba)_(in|out)$")


class OffloadUnavailable(WgRelayError):
    """The kernel offload cannot work here; the message names what and the fix."""


@dataclass(frozen=True, slots=True)
class OffloadPath:
    path_id: int
    """The relay's id for the session (small int, unique while installed)."""
    family: int
    """4 or 6; both sides must be of it (IPv4-mapped IPv6 addresses count as 4)."""
    a_port: int
    """Relay port A sends to."""
    a_addr: Addr
    """A's latched address (ip, port)."""
    b_port: int
    b_addr: Addr
    max_bytes_per_s: int
    """Per direction; 0 = unlimited."""


@dataclass(frozen=True, slots=True)
class PathCounters:
    ab_packets: int
    ab_bytes: int
    ba_packets: int
    ba_bytes: int
    """Forwarded (after the limit), counted as they leave."""
    dropped_packets: int
    """Over the bandwidth limit, both directions."""
    unrouted_packets: int = 0
    """Accepted but never left: no route, or a forward chain dropped them."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A path with everything resolved that its rules need."""

    path: OffloadPath
    family: int
    a_ip: str
    b_ip: str
    a_local: str
    """The relay address A sends to: the source of what A receives."""
    b_local: str

    @property
    def pre_keys(self) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
        p = self.path
        return (self.a_ip, p.a_addr[1], p.a_port), (self.b_ip, p.b_addr[1], p.b_port)

    @property
    def post_keys(self) -> tuple[tuple[str, int, str, int], tuple[str, int, str, int]]:
        a = (self.a_ip, self.path.a_addr[1])
        b = (self.b_ip, self.path.b_addr[1])
        return (*a, *b), (*b, *a)


# ---------------------------------------------------------------- JSON documents


def _l3(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _mangle(protocol: str, field: str, value: str | int) -> dict[str, Any]:
    return {"mangle": {"key": _payload(protocol, field), "value": value}}


def _counter() -> dict[str, Any]:
    return {"counter": {"packets": 0, "bytes": 0}}


def chain_name(path_id: int, direction: str, stage: str) -> str:
    """``p<id>_<ab|ba>_<in|out>``: how ``counters`` maps rules back to paths."""
    return f"p{path_id}_{direction}_{stage}"


def map_name(stage: str, family: int) -> str:
    return f"{'pre' if stage == 'in' else 'post'}{family}"


def table_commands(table: str) -> list[dict[str, Any]]:
    """Delete the table if it exists and create it empty: maps, base chains, lookups."""
    t = {"family": FAMILY, "table": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": table}}},
        {"delete": {"table": {"family": FAMILY, "name": table}}},
        {"add": {"table": {"family": FAMILY, "name": table}}},
    ]
    for family in (4, 6):
        addr = f"ipv{family}_addr"
        cmds.append(
            {
                "add": {
                    "map": {
                        **t,
                        "name": map_name("in", family),
                        "map": "verdict",
                        "type": [addr, "inet_service", "inet_service"],
                    }
                }
            }
        )
        cmds.append(
            {
                "add": {
                    "map": {
                        **t,
                        "name": map_name("out", family),
                        "map": "verdict",
                        "type": [addr, "inet_service", addr, "inet_service"],
                    }
                }
            }
        )
    for name, hook, prio in (
        (PRE_CHAIN, "prerouting", PRE_PRIORITY),
        (POST_CHAIN, "postrouting", POST_PRIORITY),
    ):
        cmds.append(
            {
                "add": {
                    "chain": {
                        **t,
                        "name": name,
                        "type": "filter",
                        "hook": hook,
                        "prio": prio,
                        "policy": "accept",
                    }
                }
            }
        )
    v4_whole = {
        "match": {
            "op": "==",
            "left": {"&": [_payload("ip", "frag-off"), IP_FRAG_MASK]},
            "right": 0,
        }
    }
    v6_plain = {"match": {"op": "==", "left": _payload("ip6", "nexthdr"), "right": "udp"}}
    for family, guard in ((4, v4_whole), (6, v6_plain)):
        l3 = _l3(family)
        pre_key = [_payload(l3, "saddr"), _payload("udp", "sport"), _payload("udp", "dport")]
        post_key = [
            _payload(l3, "saddr"),
            _payload("udp", "sport"),
            _payload(l3, "daddr"),
            _payload("udp", "dport"),
        ]
        for chain, key, stage in ((PRE_CHAIN, pre_key, "in"), (POST_CHAIN, post_key, "out")):
            vmap = {"vmap": {"key": {"concat": key}, "data": f"@{map_name(stage, family)}"}}
            cmds.append({"add": {"rule": {**t, "chain": chain, "expr": [guard, vmap]}}})
    return cmds


def path_commands(rw: Rewrite, table: str) -> list[dict[str, Any]]:
    """Add one path: its four chains and rules, then the map entries that reach them."""
    t = {"family": FAMILY, "table": table}
    p = rw.path
    l3 = _l3(rw.family)
    cmds: list[dict[str, Any]] = []
    # direction, where it goes (ip, port), what it leaves from (relay ip, port)
    sides = (
        ("ab", (rw.b_ip, p.b_addr[1]), (rw.b_local, p.b_port)),
        ("ba", (rw.a_ip, p.a_addr[1]), (rw.a_local, p.a_port)),
    )
    for direction, (dst_ip, dst_port), (src_ip, src_port) in sides:
        chain_in = chain_name(p.path_id, direction, "in")
        chain_out = chain_name(p.path_id, direction, "out")
        cmds.append({"add": {"chain": {**t, "name": chain_in}}})
        cmds.append({"add": {"chain": {**t, "name": chain_out}}})
        if p.max_bytes_per_s > 0:
            limit = {
                "limit": {
                    "rate": p.max_bytes_per_s,
                    "rate_unit": "bytes",
                    "per": "second",
                    "burst": LIMIT_BURST_BYTES,
                    "burst_unit": "bytes",
                    "inv": True,
                }
            }
            cmds.append(
                {
                    "add": {
                        "rule": {
                            **t,
                            "chain": chain_in,
                            "expr": [limit, _counter(), {"drop": None}],
                        }
                    }
                }
            )
        rewrite_in = [
            _counter(),
            {"notrack": None},
            _mangle(l3, "daddr", dst_ip),
            _mangle("udp", "dport", dst_port),
        ]
        rewrite_out = [_counter(), _mangle(l3, "saddr", src_ip), _mangle("udp", "sport", src_port)]
        cmds.append({"add": {"rule": {**t, "chain": chain_in, "expr": rewrite_in}}})
        cmds.append({"add": {"rule": {**t, "chain": chain_out, "expr": rewrite_out}}})
    for stage, keys in (("in", rw.pre_keys), ("out", rw.post_keys)):
        elems = [
            [{"concat": list(key)}, {"jump": {"target": chain_name(p.path_id, d, stage)}}]
            for d, key in zip(("ab", "ba"), keys, strict=True)
        ]
        cmds.append({"add": {"element": {**t, "name": map_name(stage, rw.family), "elem": elems}}})
    return cmds


def remove_commands(rw: Rewrite, table: str) -> list[dict[str, Any]]:
    """Delete one path: map entries first (they hold the chains), then the chains."""
    t = {"family": FAMILY, "table": table}
    cmds: list[dict[str, Any]] = []
    for stage, keys in (("in", rw.pre_keys), ("out", rw.post_keys)):
        elems = [{"concat": list(key)} for key in keys]
        cmds.append(
            {"delete": {"element": {**t, "name": map_name(stage, rw.family), "elem": elems}}}
        )
    for direction in ("ab", "ba"):
        for stage in ("in", "out"):
            name = chain_name(rw.path.path_id, direction, stage)
            cmds.append({"flush": {"chain": {**t, "name": name}}})
            cmds.append({"delete": {"chain": {**t, "name": name}}})
    return cmds


def document(cmds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nftables": cmds}


def parse_counters(listing: dict[str, Any]) -> dict[int, PathCounters]:
    """Per path, the counters of its chains in a JSON listing of the table."""
    # path id -> [ab_in, ab_out, ba_in, ba_out] as (packets, bytes); dropped
    seen: dict[int, dict[str, tuple[int, int]]] = {}
    dropped: dict[int, int] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        m = _CHAIN_NAME.match(str(rule.get("chain", "")))
        if m is None:
            continue
        path_id, key = int(m.group(1)), f"{m.group(2)}_{m.group(3)}"
        exprs = rule.get("expr", [])
        counter = next((e["counter"] for e in exprs if isinstance(e.get("counter"), dict)), None)
        if counter is None:
            continue
        packets, nbytes = int(counter.get("packets", 0)), int(counter.get("bytes", 0))
        seen.setdefault(path_id, {})
        if any("drop" in e for e in exprs):
            dropped[path_id] = dropped.get(path_id, 0) + packets
        else:
            seen[path_id][key] = (packets, nbytes)
    result = {}
    for path_id, c in seen.items():
        zero = (0, 0)
        ab_in, ab_out = c.get("ab_in", zero), c.get("ab_out", zero)
        ba_in, ba_out = c.get("ba_in", zero), c.get("ba_out", zero)
        # The in counter is read a moment after the out one may have moved: clamp.
        unrouted = max(0, ab_in[0] - ab_out[0]) + max(0, ba_in[0] - ba_out[0])
        result[path_id] = PathCounters(
            ab_packets=ab_out[0],
            ab_bytes=ab_out[1],
            ba_packets=ba_out[0],
            ba_bytes=ba_out[1],
            dropped_packets=dropped.get(path_id, 0),
            unrouted_packets=unrouted,
        )
    return result


def dropping_forward_chains(listing: dict[str, Any], own_table: str) -> list[str]:
    """Forward chains of other tables whose policy is drop (from ``list chains``)."""
    found = []
    for item in listing.get("nftables", []):
        chain = item.get("chain")
        if not isinstance(chain, dict) or chain.get("hook") != "forward":
            continue
        if chain.get("family") not in ("ip", "ip6", "inet"):
            continue
        if chain.get("family") == FAMILY and chain.get("table") == own_table:
            continue
        if chain.get("policy") == "drop":
            found.append(f"{chain.get('family')} {chain.get('table')} {chain.get('name')}")
    return found


# ---------------------------------------------------------------- resolving a path


def _wire_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # what a dual-stack socket reports for an IPv4 peer
    return ip


def _check_port(name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be 1-65535, not {port}")


def route_source(ip: str, port: int, family: int) -> str:
    """The address the kernel would send from to reach ``ip``: connecting sends nothing."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((ip, port))
        except OSError as e:
            raise OffloadUnavailable(f"no route to {ip}: {e.strerror or e}") from None
        return str(sock.getsockname()[0])


def resolve(path: OffloadPath, a_local: str | None = None, b_local: str | None = None) -> Rewrite:
    """Validate ``path`` and fill in the relay's addresses (ValueError if unusable)."""
    if path.family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {path.family}")
    if path.path_id < 0:
        raise ValueError(f"path_id must not be negative, not {path.path_id}")
    if path.max_bytes_per_s < 0:
        raise ValueError(f"max_bytes_per_s must not be negative, not {path.max_bytes_per_s}")
    for name, port in (
        ("a_port", path.a_port),
        ("b_port", path.b_port),
        ("A's port", path.a_addr[1]),
        ("B's port", path.b_addr[1]),
    ):
        _check_port(name, port)
    a, b = _wire_ip(path.a_addr[0]), _wire_ip(path.b_addr[0])
    if a.version != b.version:
        raise ValueError(f"path {path.path_id} mixes families: A is {a}, B is {b}")
    mapped = ipaddress.ip_address(path.a_addr[0]).version != a.version
    if path.family != a.version and not (mapped and path.family == 6):
        raise ValueError(f"path {path.path_id} says IPv{path.family} but A is {a}")
    family = a.version
    locals_ = []
    for name, given, peer in (("a_local", a_local, path.a_addr), ("b_local", b_local, path.b_addr)):
        if given is None:
            locals_.append(route_source(str(_wire_ip(peer[0])), peer[1], family))
            continue
        ip = _wire_ip(given)
        if ip.version != family:
            raise ValueError(f"{name} {given} is not IPv{family}")
        locals_.append(str(ip))
    return Rewrite(path, family, str(a), str(b), locals_[0], locals_[1])
