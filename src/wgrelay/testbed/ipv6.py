"""IPv6 on the testbed: a second family on the simulated internet, node by node.

Off unless asked: every scenario built with ``Testbed`` alone stays IPv4-only,
exactly as before. ``add_relay_ipv6`` and ``add_peer_ipv6`` give a node an
address of the documentation prefix; ``drop_peer_ipv4`` takes a peer's IPv4
way out away, so it reaches the internet over IPv6 only::

    <prefix>-inet  br0   2001:db8::1/64
    relay          eth0  2001:db8::<h>/64          h: its IPv4 host number (.10 -> ::10)
    router         wan   2001:db8::<h>/64
                   lan   2001:db8:<N>::1/64        N: its LAN's (10.N.0.0/24)
    peer           eth0  2001:db8:<N>::2/64, default route via the router's lan

The router masquerades IPv6 too (NAT66, its own nftables table beside the
IPv4 NAT's): a peer then sits behind one address in both families, and the
internet needs no routes to LAN prefixes. IPv6 forwarding has no filter, but
with masquerade nothing unsolicited reaches the LAN. Addresses skip duplicate
address detection (``nodad``), which would keep them unusable for a second or
two after they are added.
"""

from __future__ import annotations

import ipaddress

from wgrelay.testbed.topology import BRIDGE, Peer, Relay, Router, Testbed

INTERNET6 = ipaddress.IPv6Network("2001:db8::/64")
BRIDGE_ADDRESS6 = "2001:db8::1"
NAT6_TABLE = "wgrelay_nat6"


def _host6(ipv4: str) -> str:
    """The IPv6 twin of an internet host: 203.0.113.10 -> 2001:db8::10."""
    return f"2001:db8::{ipv4.rsplit('.', 1)[1]}"


def _lan6(router: Router) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"2001:db8:{router.lan.network_address.packed[1]}::/64")


def enable_internet_ipv6(tb: Testbed) -> None:
    """Give the internet's bridge its IPv6 address (idempotent)."""
    have = tb.inet.ip("-6", "address", "show", "dev", BRIDGE).stdout
    if BRIDGE_ADDRESS6 not in have:
        tb.inet.ip("address", "add", f"{BRIDGE_ADDRESS6}/64", "dev", BRIDGE, "nodad")


def add_relay_ipv6(tb: Testbed, relay: Relay) -> str:
    """Give ``relay`` an IPv6 address on the internet; returns it."""
    enable_internet_ipv6(tb)
    address = _host6(relay.address)
    relay.ns.ip("address", "add", f"{address}/{INTERNET6.prefixlen}", "dev", "eth0", "nodad")
    return address


def add_peer_ipv6(tb: Testbed, peer: Peer) -> str:
    """IPv6 for ``peer`` through its router (masqueraded); returns the peer's address."""
    enable_internet_ipv6(tb)
    router = peer.router
    lan = _lan6(router)
    router_lan, peer_address = str(lan.network_address + 1), str(lan.network_address + 2)
    router.ns.ip(
        "address", "add", f"{_host6(router.wan_address)}/64", "dev", Router.WAN_IF, "nodad"
    )
    router.ns.ip("address", "add", f"{router_lan}/64", "dev", Router.LAN_IF, "nodad")
    router.ns.sysctl("net.ipv6.conf.all.forwarding", "1")
    router.ns.nft(
        f"table ip6 {NAT6_TABLE} {{\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        oifname "{Router.WAN_IF}" masquerade\n'
        "    }\n"
        "}\n"
    )
    peer.ns.ip("address", "add", f"{peer_address}/64", "dev", "eth0", "nodad")
    peer.ns.ip("-6", "route", "add", "default", "via", router_lan)
    return peer_address


def router_wan_ipv6(peer: Peer) -> str:
    """Where the internet sees ``peer``'s IPv6 traffic come from (its router)."""
    return _host6(peer.router.wan_address)


def drop_peer_ipv4(peer: Peer) -> None:
    """Take away ``peer``'s IPv4 default route: it keeps its LAN address (the
    router is still on-link) but reaches nothing beyond it over IPv4."""
    peer.ns.ip("route", "del", "default")
