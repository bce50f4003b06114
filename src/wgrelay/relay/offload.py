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

import logging
from pathlib import Path
from typing import Any

from wgrelay.relay import nft
from wgrelay.relay.nft import Nft, NftError
from wgrelay.relay.offload_rules import (
    FAMILY,
    OffloadPath,
    OffloadUnavailable,
    PathCounters,
    Rewrite,
    document,
    dropping_forward_chains,
    parse_counters,
    path_commands,
    remove_commands,
    resolve,
    table_commands,
)

log = logging.getLogger(__name__)

__all__ = ["KernelOffload", "OffloadPath", "OffloadUnavailable", "PathCounters"]

SYSCTL_DIR = Path("/proc/sys")
IPV4_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARD = "net.ipv6.conf.all.forwarding"


def delete_stale_table(table: str = "wgrelay") -> bool:
    """Delete our table if a previous run left it (a ``kill -9``) although
    this run will not offload: its rules would still rewrite the session
    ports this run hands out again. True if one was deleted; never raises."""
    if nft.available() is not None:
        return False
    try:
        with Nft() as ctx:
            ctx.run(document([{"delete": {"table": {"family": FAMILY, "name": table}}}]))
    except (NftError, OSError):
        return False  # (none there)
    return True


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
