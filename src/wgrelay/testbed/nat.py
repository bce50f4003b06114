"""nftables rule sets for the testbed's NAT routers and lossy links.

Every builder returns the text of an nft script; ``Namespace.nft`` loads it with
``nft -f -``, which applies a whole script atomically or not at all.

A router's table looks like this (``fwd`` is an nft keyword, hence the longer
chain names)::

    table ip wgrelay_nat
      chain prerouting_dnat    nat, prerouting:   port forwards (DNAT), empty at first
      chain postrouting_snat   nat, postrouting:  oifname WAN masquerade [fully-random]
      chain input_filter       filter, input:     iifname WAN ct state new (not ICMP) drop
      chain forward_block      regular chain:     "block UDP" switch, empty at first
      chain forward_filter     filter, forward, policy drop:
                                 jump forward_block
                                 ct state established,related accept
                                 iifname LAN accept
                                 (+ one accept per port forward)

* ``SYMMETRIC``: ``masquerade fully-random`` picks a fresh random source port for
  every new flow, so the mapping depends on the destination (endpoint-dependent
  mapping): the port a peer learns about us is useless to anyone else.
* ``CONE``: plain ``masquerade`` keeps the source port whenever it is free, so one
  local port maps to the same public port for every destination. Filtering is
  still stateful (only replies and LAN-originated flows pass), i.e. a
  port-restricted cone.
* ``FULL_CONE``: ``CONE``'s mapping, and a new flow from anyone to a WAN port is
  DNATed to the LAN host's same port (endpoint-independent filtering).
* ``RESTRICTED_CONE``: the same, but only from addresses the LAN host has sent
  to (a dynamic set filled by its outbound packets, 120 s): address-dependent
  filtering.
* ``PORT_RESTRICTED_CONE``: WireGuard's port P leaves as WAN port P + 10000
  for every destination (``masquerade to :port``: endpoint-independent
  mapping onto another port), stateful filtering as ``CONE``. A peer
  configured with the NAT's address and port P reaches nothing.
* ``UDP_BLOCKED``: every forwarded UDP packet dropped, both ways (the block
  chain filled from the start).

The input filter matters for hole punching. Without it, a peer's packet that
reaches our WAN address before our own peer has sent anything would be
delivered locally, answered with ICMP port unreachable, and leave a conntrack
entry ``them:port -> WAN:port``. That entry occupies the mapping our peer needs
(masquerade then picks another port), and the other side's retries refresh it
forever. Dropping it in the input hook means the entry is never confirmed:
unsolicited packets leave no trace, as on a real NAT.

Rule changes do not affect flows conntrack already knows: NAT rules are only
consulted for a flow's first packet. Whoever changes rules on a live router must
flush conntrack (``conntrack -F``) afterwards, or old entries keep deciding the
path.
"""

from __future__ import annotations

from enum import Enum

NAT_TABLE = "wgrelay_nat"
LOSS_TABLE = "wgrelay_loss"

PREROUTING_CHAIN = "prerouting_dnat"
POSTROUTING_CHAIN = "postrouting_snat"
FORWARD_CHAIN = "forward_filter"
INPUT_CHAIN = "input_filter"
BLOCK_CHAIN = "forward_block"
LOSS_CHAIN = "prerouting_loss"


class NatKind(Enum):
    """How a NAT router maps and filters (see the module docstring)."""

    SYMMETRIC = "symmetric"
    CONE = "cone"
    """Port-preserving, port-restricted (Linux's plain masquerade)."""
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    """Endpoint-independent mapping onto another port (WireGuard's port)."""
    UDP_BLOCKED = "udp-blocked"


REMAP_OFFSET = 10000
"""A port-restricted cone maps the LAN host's WireGuard port P to WAN port
P + REMAP_OFFSET for every destination (51820 -> 61820)."""
CONTACTED_SET = "contacted"


def _replace_table(family: str, table: str) -> str:
    # "add table" then "delete table" makes the delete safe whether or not the
    # table exists; within one script the whole replacement is atomic.
    return f"table {family} {table} {{}}\ndelete table {family} {table}\n"


def router_ruleset(
    kind: NatKind, *, wan_if: str, lan_if: str, lan_host: str = "", wg_port: int = 0
) -> str:
    """The NAT router's whole table (replacing any previous one).

    ``lan_host`` (the one host behind the router) and ``wg_port`` (its
    WireGuard port) are needed by the cone kinds that let flows in or remap.
    """
    if kind in (NatKind.FULL_CONE, NatKind.RESTRICTED_CONE) and not lan_host:
        raise ValueError(f"a {kind.value} NAT needs its LAN host's address")
    if kind is NatKind.PORT_RESTRICTED_CONE:
        _check_port(wg_port)
        _check_port(wg_port + REMAP_OFFSET)
    masquerade = "masquerade fully-random" if kind is NatKind.SYMMETRIC else "masquerade"
    snat = f'        oifname "{wan_if}" {masquerade}\n'
    if kind is NatKind.PORT_RESTRICTED_CONE:
        # one WAN port for WireGuard's socket, whatever the destination
        snat = (
            f'        oifname "{wan_if}" udp sport {wg_port} '
            f"masquerade to :{wg_port + REMAP_OFFSET}\n" + snat
        )
    dnat = contacted = remember = ""
    if kind is NatKind.FULL_CONE:
        # endpoint-independent filtering: a new flow from anyone to a port
        # goes to the LAN host's same port (the mapping kept the port)
        dnat = f'        iifname "{wan_if}" meta l4proto udp dnat to {lan_host}\n'
    elif kind is NatKind.RESTRICTED_CONE:
        # address-dependent: only from an address the LAN host sent to
        contacted = (
            f"    set {CONTACTED_SET} {{\n"
            f"        type ipv4_addr; flags dynamic, timeout; timeout 120s;\n"
            f"    }}\n"
        )
        dnat = (
            f'        iifname "{wan_if}" ip saddr @{CONTACTED_SET} meta l4proto udp '
            f"dnat to {lan_host}\n"
        )
        remember = f'        iifname "{lan_if}" update @{CONTACTED_SET} {{ ip daddr }}\n'
    inbound = f'        iifname "{wan_if}" ct status dnat accept\n' if dnat else ""
    block = "        meta l4proto udp drop\n" if kind is NatKind.UDP_BLOCKED else ""
    return _replace_table("ip", NAT_TABLE) + (
        f"table ip {NAT_TABLE} {{\n"
        f"{contacted}"
        f"    chain {PREROUTING_CHAIN} {{\n"
        f"        type nat hook prerouting priority dstnat; policy accept;\n"
        f"{dnat}"
        f"    }}\n"
        f"    chain {POSTROUTING_CHAIN} {{\n"
        f"        type nat hook postrouting priority srcnat; policy accept;\n"
        f"{snat}"
        f"    }}\n"
        f"    chain {INPUT_CHAIN} {{\n"
        f"        type filter hook input priority filter; policy accept;\n"
        f'        iifname "{wan_if}" ct state new meta l4proto != icmp drop\n'
        f"    }}\n"
        f"    chain {BLOCK_CHAIN} {{\n"
        f"{block}"
        f"    }}\n"
        f"    chain {FORWARD_CHAIN} {{\n"
        f"        type filter hook forward priority filter; policy drop;\n"
        f"        jump {BLOCK_CHAIN}\n"
        f"{remember}"
        f"        ct state established,related accept\n"
        f'        iifname "{lan_if}" accept\n'
        f"{inbound}"
        f"    }}\n"
        f"}}\n"
    )


def port_forward_rules(*, wan_if: str, port: int, to_address: str, proto: str = "udp") -> str:
    """DNAT ``WAN:port`` to ``to_address:port`` and let it through the filter."""
    _check_port(port)
    if proto not in ("udp", "tcp"):
        raise ValueError(f"port forwards are for udp or tcp, not {proto!r}")
    return (
        f"add rule ip {NAT_TABLE} {PREROUTING_CHAIN} "
        f'iifname "{wan_if}" {proto} dport {port} dnat to {to_address}:{port}\n'
        f"add rule ip {NAT_TABLE} {FORWARD_CHAIN} "
        f'iifname "{wan_if}" ip daddr {to_address} {proto} dport {port} ct status dnat accept\n'
    )


def block_udp_rules() -> str:
    """Drop all forwarded UDP, both ways: a network where only TCP gets through.

    The block chain is jumped to before the "established" accept, so flows that
    already exist are cut too; no conntrack flush is needed.
    """
    return (
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} meta l4proto udp drop\n"
    )


def unblock_rules() -> str:
    return f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"


def loss_ruleset(percent: int) -> str:
    """Drop ``percent`` % of the packets entering a namespace (0 removes the loss).

    The kernel here has no netem, so loss comes from nftables' random numbers.
    It applies at prerouting, to every packet arriving on a non-loopback
    interface: a router loses in both directions, an end host on its inbound side.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"loss must be between 0 and 100 %, not {percent}")
    script = _replace_table("inet", LOSS_TABLE)
    if percent == 0:
        return script
    # nft rejects "< 100" (numgen mod 100 yields 0-99), so total loss is spelled out.
    sample = "" if percent == 100 else f"numgen random mod 100 < {percent} "
    return script + (
        f"table inet {LOSS_TABLE} {{\n"
        f"    chain {LOSS_CHAIN} {{\n"
        f"        type filter hook prerouting priority raw; policy accept;\n"
        f'        iifname != "lo" {sample}drop\n'
        f"    }}\n"
        f"}}\n"
    )


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"not a port number: {port}")
