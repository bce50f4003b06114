"""Kernel offload of relayed port-mode sessions: a stateless rewrite in nftables.

In port mode the relay gives each side of a session its own UDP port. A's
WireGuard sends to ``relay:a_port``; the relay sends the packet, unchanged, out
of ``relay:b_port`` to B's latched address, and back the other way. Userspace
does that with sockets. Once a session is established and verified, this module
lets the kernel do it instead, with no copy to userspace and no conntrack::

    A ──▶ relay:a_port                            relay:b_port ──▶ B
          │ prerouting (raw, -300)                ▲ postrouting (srcnat, 100)
          │ ip saddr . udp sport . udp dport      │ ip saddr . udp sport . ip daddr . udp dport
          │   vmap @pre4 ─▶ p7_ab_in:             │   vmap @post4 ─▶ p7_ab_out:
          │   limit over N bytes/s: count, drop   │   counter
          │   counter notrack                     │   ip saddr set <relay address B uses>
          │   ip daddr set b_ip udp dport set b_rport    udp sport set b_port
          ▼                                       │
          routing ─▶ forward ─────────────────────┘

Why this hook (prerouting + forwarding + postrouting) and not netdev ingress
with ``fwd``: the kernel's own routing picks the egress device, the next hop
and its neighbour entry for every packet, so route changes, multipath, ARP/ND
and interfaces without link-layer headers (a tunnel uplink) all just work, and
there is one table for every interface. ``fwd`` would have us resolve and pin
the next hop and device per session and reattach chains when interfaces come
and go. The price is a host setting: forwarding must be on
(``net.ipv4.ip_forward=1``; ``net.ipv6.conf.all.forwarding=1`` for IPv6
sessions). We never change it: ``open`` refuses with ``OffloadUnavailable``
naming the sysctl, and without IPv6 forwarding only IPv6 sessions stay in
userspace. The source is unchanged at prerouting, so a strict ``rp_filter``
passes; the source rewrite waits for postrouting because the kernel drops a
packet arriving with one of its own addresses as the source (a martian).

Matching is exact: only ``(A's address, A's port) -> a_port`` (and the same for
B) jump to a session's chains, through a verdict map: one hash lookup per
packet, however many sessions are offloaded. Anything else arriving on those
ports misses the map and reaches the relay's sockets as before. IPv4 fragments
and IPv6 packets with extension headers are never offloaded (a non-first
fragment has no ports): userspace reassembles and relays them.

The rewrite of addresses and ports updates the UDP checksum (libnftables asks
the kernel for the pseudo-header update on saddr/daddr, and for the checksum
update on the ports). Bandwidth is limited per direction before the rewrite:
``limit rate over N bytes/second`` drops and counts the excess. The kernel's
byte bucket holds one second of the rate plus ``LIMIT_BURST_BYTES``, so a path
idle for a second may send that much at once before the limit bites.

Counters: each session chain counts, and ``counters`` reads them all back with
one listing of the table. ``unrouted_packets`` are packets accepted at
prerouting that never reached postrouting: no route, or dropped in a forward
chain of another table (a firewall whose forward policy is drop, e.g. Docker's;
``describe`` warns about the ones nftables shows).

The relay's sockets do not see offloaded packets any more, so its idle timers
must watch ``counters``. The table is the relay's alone: ``open`` deletes and
recreates it, so nothing from a crashed run survives. Calls block for about a
millisecond (one netlink transaction) and are not thread-safe.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wgrelay.errors import WgRelayError
from wgrelay.relay import nft
from wgrelay.relay.nft import Nft, NftError

log = logging.getLogger(__name__)

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

SYSCTL_DIR = Path("/proc/sys")
IPV4_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"

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


# ---------------------------------------------------------------- host settings


def read_sysctl(key: str, root: Path = SYSCTL_DIR) -> str | None:
    """A sysctl's value, or None when it does not exist (IPv6 disabled)."""
    try:
        return (root / key.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _forwarding_missing(key: str, root: Path) -> str | None:
    value = read_sysctl(key, root)
    if value == "1":
        return None
    state = "missing" if value is None else f"is {value}"
    # With forwarding on, Linux ignores router advertisements unless accept_ra=2.
    ra = " (an uplink configured by router advertisements then needs accept_ra=2)"
    return (
        f"kernel offload needs {key}=1 ({state}): offloaded packets are routed and "
        f"forwarded by the kernel; enable it with 'sysctl -w {key}=1'"
        f"{ra if key == IPV6_FORWARD else ''} (and in /etc/sysctl.d/ to keep it), "
        f"or run the relay without offload"
    )


# ---------------------------------------------------------------- the offload


class KernelOffload:
    """The relay's nftables table of offloaded sessions."""

    TABLE = "wgrelay"

    def __init__(
        self,
        nft_ctx: Nft,
        table: str,
        *,
        ipv6: bool,
        forward_drops: list[str],
        sysctl_root: Path = SYSCTL_DIR,
    ) -> None:
        self._sysctl_root = sysctl_root
        self._nft: Nft | None = nft_ctx
        self.table = table
        self.ipv6 = ipv6
        """Whether IPv6 sessions can be offloaded (IPv6 forwarding is on)."""
        self.forward_drops = forward_drops
        self._installed: dict[int, Rewrite] = {}
        self._pre_keys: dict[tuple[str, int, int], int] = {}
        self._post_keys: dict[tuple[str, int, str, int], int] = {}

    @classmethod
    def open(cls, table: str = TABLE, *, sysctl_root: Path = SYSCTL_DIR) -> KernelOffload:
        """Check the host, then (re)create the table empty.

        Raises ``OffloadUnavailable`` when libnftables is missing, we lack
        CAP_NET_ADMIN, or IPv4 forwarding is off. Never changes a host setting.
        """
        missing = _forwarding_missing(IPV4_FORWARD, sysctl_root)
        if missing is not None:
            raise OffloadUnavailable(missing)
        reason = nft.available()
        if reason is not None:
            raise OffloadUnavailable(f"kernel offload unavailable: {reason}")
        ipv6 = _forwarding_missing(IPV6_FORWARD, sysctl_root) is None
        ctx = Nft()
        try:
            drops = dropping_forward_chains(ctx.run(document([{"list": {"chains": {}}}])), table)
            ctx.run(document(table_commands(table)))
        except NftError as e:
            ctx.close()
            raise OffloadUnavailable(f"kernel offload unavailable: nftables: {e}") from None
        offload = cls(ctx, table, ipv6=ipv6, forward_drops=drops, sysctl_root=sysctl_root)
        for chain in drops:
            log.warning(
                "forward chain %s drops by default: offloaded packets die there "
                "unless it accepts them (see unrouted_packets)",
                chain,
            )
        return offload

    def __enter__(self) -> KernelOffload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, cmds: list[dict[str, Any]], what: str) -> dict[str, Any]:
        if self._nft is None:
            raise OffloadUnavailable("kernel offload is closed")
        try:
            return self._nft.run(document(cmds))
        except NftError as e:
            raise NftError(f"{what}: {e}") from None

    def install(
        self, path: OffloadPath, *, a_local: str | None = None, b_local: str | None = None
    ) -> None:
        """Offload ``path``, replacing a path of the same id in the same transaction.

        ``a_local``/``b_local``: the relay address A (B) sends to, the source of
        what it receives; by default the address the kernel picks to reach it
        (right unless the relay has several addresses on that route).
        Raises ValueError for a malformed path, one of mixed families, or one
        whose addresses another path already offloads; ``OffloadUnavailable``
        for an IPv6 path without IPv6 forwarding; ``NftError`` if refused.
        """
        rw = resolve(path, a_local, b_local)
        if rw.family == 6 and not self.ipv6:
            missing = _forwarding_missing(IPV6_FORWARD, self._sysctl_root)
            raise OffloadUnavailable(missing or f"{IPV6_FORWARD} was off at open()")
        for key in rw.pre_keys:
            other = self._pre_keys.get(key)
            if other is not None and other != path.path_id:
                raise ValueError(f"{key[0]}:{key[1]} -> port {key[2]} is path {other}'s")
        for pair in rw.post_keys:
            other = self._post_keys.get(pair)
            if other is not None and other != path.path_id:
                raise ValueError(f"{pair[0]}:{pair[1]} <-> {pair[2]}:{pair[3]} is path {other}'s")
        old = self._installed.get(path.path_id)
        cmds = [] if old is None else remove_commands(old, self.table)
        self._run(cmds + path_commands(rw, self.table), f"installing path {path.path_id}")
        if old is not None:
            self._forget(old)
        self._installed[path.path_id] = rw
        for pre in rw.pre_keys:
            self._pre_keys[pre] = path.path_id
        for post in rw.post_keys:
            self._post_keys[post] = path.path_id

    def remove(self, path_id: int) -> None:
        """Stop offloading ``path_id``; its packets go to userspace again. No error if absent."""
        rw = self._installed.get(path_id)
        if rw is None:
            return
        self._run(remove_commands(rw, self.table), f"removing path {path_id}")
        self._forget(rw)

    def _forget(self, rw: Rewrite) -> None:
        del self._installed[rw.path.path_id]
        for pre in rw.pre_keys:
            self._pre_keys.pop(pre, None)
        for post in rw.post_keys:
            self._post_keys.pop(post, None)

    def counters(self) -> dict[int, PathCounters]:
        """Every installed path's counters, from one listing of the table."""
        listing = self._run(
            [{"list": {"table": {"family": FAMILY, "name": self.table}}}], "reading counters"
        )
        found = parse_counters(listing)
        return {pid: c for pid, c in found.items() if pid in self._installed}

    def paths(self) -> set[int]:
        return set(self._installed)

    def close(self) -> None:
        """Delete the table (every offloaded path stops) and free the context. Idempotent."""
        if self._nft is None:
            return
        try:
            self._nft.run(document([{"delete": {"table": {"family": FAMILY, "name": self.table}}}]))
        except NftError as e:
            log.warning("could not delete nftables table %s %s: %s", FAMILY, self.table, e)
        finally:
            self._nft.close()
            self._nft = None
            self._installed.clear()
            self._pre_keys.clear()
            self._post_keys.clear()

    def describe(self) -> str:
        """One line for the start log: the hook, and the host settings it relies on."""
        v6 = "on" if self.ipv6 else "off: IPv6 sessions stay in userspace"
        text = (
            f"kernel offload: nftables table {FAMILY} {self.table}, prerouting (raw, notrack) "
            f"rewrites the destination, the kernel forwards, postrouting rewrites the source; "
            f"needs {IPV4_FORWARD}=1 (on), {IPV6_FORWARD}=1 ({v6})"
        )
        if self.forward_drops:
            text += (
                f"; warning: forward chain(s) with policy drop ({', '.join(self.forward_drops)})"
                " must accept offloaded packets"
            )
        return text
