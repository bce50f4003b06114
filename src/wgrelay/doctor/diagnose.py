"""The diagnosis: pure functions from gathered ``Facts`` to ``Finding``s.

No I/O and no clock here (``Facts.wall`` is the time of the measurement), so
every rule is unit-tested on recorded facts. Each check returns findings of
one ``check`` name; docs/DOCTOR.md describes every one, what it means and
the fixes it proposes. ``diagnose`` runs them all in a fixed order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wgrelay.doctor.facts import Facts, ProbeOutcome, RelayProbe
from wgrelay.doctor.findings import Finding, Level, answered, port_text, short, where
from wgrelay.doctor.peers import check_agent, status_peers
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.mesh.backend.base import parse_endpoint
from wgrelay.mesh.mtu import PATH_MTU, relayed_packet_size
from wgrelay.proto.constants import DATA_HEADER_LEN, MappingKind
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S

DEFAULT_WIREGUARD_MTU = 1420
"""What wg-quick and wireguard-go give an interface unless told otherwise."""
CLOCK_WARN_S = 5.0
"""A clock this far from the relays' is worth fixing (NTP keeps it in ms)."""
CLOCK_FAIL_S = MAX_CLOCK_SKEW_S
"""Beyond this relays refuse our control messages (the agent then follows
each relay's clock, with a warning) and signed records look expired or
issued in the future."""


@dataclass(frozen=True, slots=True)
class NatVerdict:
    kind: MappingKind
    behind_nat: bool | None
    """False: a relay saw our own address and port (no NAT on the way);
    None: no relay told us where it saw us."""
    family: str | None
    observed: tuple[tuple[str, Endpoint], ...]
    """(relay key, where it saw us), for every relay of ``family`` that said."""


def classify_mapping(observed: Sequence[Endpoint]) -> MappingKind:
    """How a NAT maps one local socket, from where two or more destinations
    saw it: one public endpoint for all of them is endpoint-independent
    mapping ("cone"), any difference is per destination ("symmetric").

    The same rule as the relay's MAPPING_PROBE verdict (relay/ports.py,
    ``PortTable.probed``: the latch towards the session port against the
    probe's source at the main port), with the IP compared too: there the
    relay has matched the IP already, here two relays see us independently,
    and a NAT that picks another public IP per destination maps per
    destination as surely as one that picks another port.
    """
    if len(observed) < 2:
        return MappingKind.UNKNOWN
    first = observed[0]
    return (
        MappingKind.INDEPENDENT
        if all(ep == first for ep in observed[1:])
        else MappingKind.DEPENDENT
    )


def _family(host: str) -> str:
    return "ipv6" if ":" in host else "ipv4"


def _text_family(text: str) -> str | None:
    try:
        return _family(parse_endpoint(text)[0])
    except ValueError:
        return None


# ------------------------------------------------------------ relays and UDP


def check_relays(facts: Facts) -> list[Finding]:
    if facts.relays_known == 0:
        return [
            Finding(
                "relays",
                Level.FAIL,
                "no relays known in the state directory: nothing to fall back to",
                "add one: wgrelay add-bootstrap-relay ENDPOINT PUB_KEY "
                "(or wgrelay up IFACE --relay ENDPOINT=PUB_KEY)",
            )
        ]
    out = [_relay_finding(facts, p) for p in facts.relays]
    ok = [p for p in facts.relays if answered(p)]
    if ok:
        out.append(
            Finding(
                "udp",
                Level.OK,
                f"UDP to relays works: {len(ok)} of {len(facts.relays)} answered",
                data={"answered": len(ok), "probed": len(facts.relays)},
            )
        )
    elif all(p.outcome is ProbeOutcome.TIMEOUT for p in facts.relays):
        ports = sorted({p.endpoint[1] for p in facts.relays})
        out.append(
            Finding(
                "udp",
                Level.FAIL,
                f"UDP to relays blocked: none of {len(facts.relays)} relays answered, "
                "and no ICMP came back either",
                "allow outbound UDP to the relays' port"
                f"{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))} "
                "(and its answers) in this network's firewall; meanwhile the agent falls "
                "back to TCP, then TLS, at relays that offer them",
                data={"answered": 0, "probed": len(facts.relays)},
            )
        )
    else:
        out.append(
            Finding(
                "udp",
                Level.FAIL,
                f"no relay answered (of {len(facts.relays)})",
                "see the relay lines above for each one's fix",
                data={"answered": 0, "probed": len(facts.relays)},
            )
        )
    return out


def _relay_finding(facts: Facts, p: RelayProbe) -> Finding:
    at = f"{short(p.key)} at {endpoint_str(p.endpoint)}"
    port = p.endpoint[1]
    data = {"outcome": p.outcome.value, "rtt_ms": p.rtt_ms}
    rtt = f"{p.rtt_ms:.1f} ms" if p.rtt_ms is not None else "an unmeasured time"
    # a relay the operator named is worth a failure; one learned by gossip
    # that is gone is the federation's business (it ages out)
    bad = Level.FAIL if p.bootstrap else Level.WARN
    match p.outcome:
        case ProbeOutcome.REGISTERED:
            seen = f"; sees us at {endpoint_str(p.observed)}" if p.observed else ""
            return Finding(
                "relay", Level.OK, f"{at}: answered in {rtt} (authenticated){seen}",
                subject=p.key, data=data,
            )  # fmt: skip
        case ProbeOutcome.NOT_ALLOWED if facts.key_source == "interface":
            return Finding(
                "relay",
                Level.FAIL,
                f"{at}: answered in {rtt}, but refuses {facts.interface}'s key: "
                "it will not relay for this peer",
                "ask its operator to allow this key (start-relay --allow-file, or "
                "--allow-peers-of an interface that has this peer)",
                subject=p.key,
                data=data,
            )
        case ProbeOutcome.NOT_ALLOWED:
            return Finding(
                "relay",
                Level.OK,
                f"{at}: answered in {rtt} (authenticated); it serves only the keys it "
                "allows, so it did not say where it sees us",
                subject=p.key,
                data=data,
            )
        case ProbeOutcome.REFUSED:
            return Finding(
                "relay",
                bad,
                f"{at}: refused (ICMP port unreachable): nothing listens on UDP port {port}",
                "start the relay there (wgrelay start-relay), or correct its endpoint "
                "(wgrelay add-bootstrap-relay ENDPOINT PUB_KEY)",
                subject=p.key,
                data=data,
            )
        case ProbeOutcome.UNREACHABLE:
            return Finding(
                "relay", bad, f"{at}: cannot send ({p.detail or 'no route'})",
                "check this host's network and routes towards the relay",
                subject=p.key, data=data,
            )  # fmt: skip
        case ProbeOutcome.BAD_KEY:
            return Finding(
                "relay",
                bad,
                f"{at}: something answers there, but never as relay {short(p.key)}: "
                "the key we know for it is wrong",
                "get the relay's key from its operator (wgrelay pubkey < relay.key) and "
                "add it again: wgrelay add-bootstrap-relay ENDPOINT PUB_KEY",
                subject=p.key,
                data=data,
            )
        case _:
            return Finding(
                "relay",
                bad,
                f"{at}: no answer ({p.detail or 'timeout'}), and no ICMP refusal: UDP to "
                f"it is filtered, it is down behind a firewall, or its key is not {short(p.key)}",
                f"check that the relay runs, that UDP port {port} is open between here and "
                "there, and that its key (wgrelay pubkey on the relay) is the one known here",
                subject=p.key,
                data=data,
            )


# ------------------------------------------------------------ NAT mapping


def nat_verdict(facts: Facts) -> NatVerdict:
    """The NAT's mapping behaviour from where the relays saw our one socket
    (IPv4 when any relay saw us over IPv4: that is where NATs are)."""
    seen = [p for p in facts.relays if p.observed is not None]
    if not seen:
        return NatVerdict(MappingKind.UNKNOWN, None, None, ())
    families = {_family(p.endpoint[0]) for p in seen}
    family = "ipv4" if "ipv4" in families else "ipv6"
    seen = [p for p in seen if _family(p.endpoint[0]) == family]
    observed = tuple((p.key, p.observed) for p in seen if p.observed is not None)
    local = [p for p in seen if p.local is not None]
    behind: bool | None = None
    if local:
        behind = any(p.observed != p.local for p in local)
    kind = classify_mapping([ep for _, ep in observed])
    if behind is False:
        kind = MappingKind.INDEPENDENT  # no NAT maps nothing: one relay says enough
    return NatVerdict(kind, behind, family, observed)


def nat_to_json(v: NatVerdict) -> dict[str, Any]:
    """The ``nat`` object of ``doctor --json``."""
    return {
        "kind": v.kind.name.lower(),
        "behind_nat": v.behind_nat,
        "family": v.family,
        "observed": [{"relay": k, "endpoint": endpoint_str(ep)} for k, ep in v.observed],
    }


def check_nat(facts: Facts, v: NatVerdict) -> list[Finding]:
    data = nat_to_json(v)
    seen = ", ".join(f"{short(k)} sees {endpoint_str(ep)}" for k, ep in v.observed)
    if v.behind_nat is False:
        return [
            Finding(
                "nat", Level.OK,
                f"no NAT between us and the relays: they see our own address ({seen})",
                data=data,
            )
        ]  # fmt: skip
    if v.kind is MappingKind.INDEPENDENT:
        return [
            Finding(
                "nat",
                Level.OK,
                f"NAT mapping endpoint-independent (cone): one public address for every "
                f"destination ({seen}); direct paths work towards most peers",
                data=data,
            )
        ]
    if v.kind is MappingKind.DEPENDENT:
        ips = {ep[0] for _, ep in v.observed}
        how = "another public IP" if len(ips) > 1 else "another public port"
        return [
            Finding(
                "nat",
                Level.WARN,
                f"NAT mapping per destination (symmetric): {how} for every destination "
                f"({seen}); direct paths only to peers with a public address or a "
                "cone NAT that accepts them, else relayed",
                f"forward UDP port {port_text(facts)} to this host on the NAT "
                "(or give it a public address)",
                data=data,
            )
        ]
    if len(v.observed) == 1:
        return [
            Finding(
                "nat",
                Level.WARN,
                f"NAT mapping unknown (needs two relays): only one relay said where it sees "
                f"us ({seen})",
                "add a second relay to compare with: wgrelay add-bootstrap-relay ENDPOINT PUB_KEY",
                data=data,
            )
        ]
    why = "no relay said where it sees us"
    if any(p.outcome is ProbeOutcome.NOT_ALLOWED for p in facts.relays):
        why += " (relays that refuse the probe's key do not)"
    return [
        Finding(
            "nat",
            Level.WARN,
            f"NAT mapping unknown: {why}",
            "make two relays reachable that serve this key"
            + (
                f" (run the doctor with INTERFACE while its agent is stopped: "
                f"{facts.interface or 'its'} key is one they allow)"
                if facts.key_source == "throwaway"
                else ""
            ),
            data=data,
        )
    ]


# ------------------------------------------------------------ clock


def check_clock(facts: Facts) -> list[Finding]:
    offsets = [(p, p.clock_offset_s) for p in facts.relays if p.clock_offset_s is not None]
    if not offsets:
        return [Finding("clock", Level.WARN, "clock not checked: no relay answered")]
    ours = statistics.median(o for _, o in offsets)
    out: list[Finding] = []
    data = {"offset_s": round(ours, 3), "relays": len(offsets)}
    behind = "ahead of" if ours < 0 else "behind"
    if abs(ours) > CLOCK_FAIL_S:
        out.append(
            Finding(
                "clock",
                Level.FAIL,
                f"our clock is {abs(ours):.0f} s {behind} the relays': they refuse control "
                f"messages more than {CLOCK_FAIL_S:.0f} s off (the agent follows each relay's "
                "clock then) and signed relay records look expired or from the future",
                "set the clock (enable NTP: timedatectl set-ntp true)",
                data=data,
            )
        )
    elif abs(ours) > CLOCK_WARN_S:
        out.append(
            Finding(
                "clock",
                Level.WARN,
                f"our clock is {abs(ours):.1f} s {behind} the relays' (refused beyond "
                f"{CLOCK_FAIL_S:.0f} s)",
                "enable NTP (timedatectl set-ntp true)",
                data=data,
            )
        )
    else:
        out.append(
            Finding(
                "clock",
                Level.OK,
                f"clock agrees with {len(offsets)} relay{'s' if len(offsets) > 1 else ''} "
                f"(offset {round(ours, 3) or 0.0:+.3f} s)",
                data=data,
            )
        )
    if len(offsets) >= 2:
        for p, o in offsets:
            if abs(o - ours) > CLOCK_WARN_S:
                out.append(
                    Finding(
                        "clock",
                        Level.WARN,
                        f"{where(p)}: its clock is {o - ours:+.0f} s off the others'",
                        "tell the relay's operator to enable NTP there",
                        subject=p.key,
                        data={"offset_s": round(o, 3)},
                    )
                )
    return out


# ------------------------------------------------------------ MTU


def check_mtu(facts: Facts) -> list[Finding]:
    """Whether a full-MTU WireGuard packet, relayed, fits a 1500-byte path:
    port mode adds nothing to WireGuard's packet, framed mode the 10-byte
    data header (mesh/mtu.py has the sizes)."""
    mtu = facts.mtu if facts.mtu is not None else DEFAULT_WIREGUARD_MTU
    assumed = "" if facts.mtu is not None else " (assumed: WireGuard's default)"
    families = sorted({_family(p.endpoint[0]) for p in facts.relays}) or ["ipv4"]
    framed_now = {
        _text_family(str(p.get("relay_endpoint") or ""))
        for p in status_peers(facts)
        if p.get("path") == "relayed" and str(p.get("relay_mode") or "").startswith("framed")
    }
    out = []
    for fam in families:
        framed = relayed_packet_size(mtu, ipv6=fam == "ipv6")
        port = framed - DATA_HEADER_LEN
        name = "IPv6" if fam == "ipv6" else "IPv4"
        data = {"mtu": mtu, "family": fam, "framed_bytes": framed, "port_mode_bytes": port}
        if port > PATH_MTU:
            out.append(
                Finding(
                    "mtu",
                    Level.WARN,
                    f"MTU {mtu}{assumed}: relayed over {name} a full packet is {port} bytes "
                    f"even in port mode ({framed} framed), more than a {PATH_MTU}-byte path "
                    "carries: fragmented",
                    f"set the interface MTU to {PATH_MTU - (framed - mtu)} or less",
                    data=data,
                )
            )
        elif framed > PATH_MTU:
            out.append(
                Finding(
                    "mtu",
                    Level.WARN,
                    f"MTU {mtu}{assumed}: relayed over {name}, port mode fits ({port} bytes) "
                    f"but framed relaying sends {framed}, more than {PATH_MTU}: fragmented"
                    + (" (a peer is relayed framed now)" if fam in framed_now else ""),
                    f"set the interface MTU to {PATH_MTU - (framed - mtu)} or less if peers "
                    "relay framed (status shows relayed (framed))",
                    data=data,
                )
            )
        else:
            out.append(
                Finding(
                    "mtu",
                    Level.OK,
                    f"MTU {mtu}{assumed}: relayed over {name} a full packet is at most "
                    f"{framed} bytes, fits a {PATH_MTU}-byte path",
                    data=data,
                )
            )
    return out


# ------------------------------------------------------------ everything


def diagnose(facts: Facts) -> tuple[list[Finding], NatVerdict]:
    verdict = nat_verdict(facts)
    findings = [
        *check_relays(facts),
        *(check_nat(facts, verdict) if facts.relays_known else []),
        *(check_clock(facts) if facts.relays else []),
        *check_mtu(facts),
        *check_agent(facts),
    ]
    return findings, verdict


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(f.level is Level.FAIL for f in findings) else 0
