#!/usr/bin/env python3
"""Relayed vs direct WireGuard throughput on the namespace testbed (root only).

Six testbeds, same machine, same run, iperf3 TCP through wireguard-go:

* **direct**: both peers behind port-preserving NAT with a port forward to each
  WireGuard port; the agents find the direct path (no relay session is used);
* **port + kernel**: both peers behind symmetric NAT, relayed in port mode
  (WireGuard's endpoint is the relay's session port), the relay forwarding in
  the kernel: ``--kernel-offload on`` with ``net.ipv4.ip_forward=1`` set in the
  relay's own namespace;
* **port, userspace**: the same with ``--kernel-offload off`` (the relay's
  sockets forward);
* **framed**: agents ``up --framed-only`` (10-byte header through the agent's
  127.0.0.1 proxy), relay ``--kernel-offload off``;
* **tcp**: a's router drops all UDP, so a's agent reaches the relay over TCP
  (WireGuard's packets through its proxy and the stream); b on UDP;
* **tls**: a's router lets only TCP to port 443 out (relay
  ``--tls-self-signed``, TLS on 443).

Every relay runs with ``--max-bandwidth 0`` (uncapped, to measure the path, not
the quota). Each relayed case is checked to run in the mode it claims, before
and after the measurement: the agents' status (``relay_mode``), WireGuard's
endpoint (the relay's session port, or the agent's 127.0.0.1 proxy), the
agent's path, and for the kernel case the offload table in the relay's
namespace (map elements for both session ports, and its counters carrying the
traffic); the other cases must have no such table. A mismatch fails the run.

    .venv/bin/python bench/testbed_iperf.py [--seconds 5] [--reps 3] [--only port_kernel,...]

Prints a markdown table with each case's ratio to direct. Every namespace and
process is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import bench_common
from bench_common import forwarded_packets, mapped_ports

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.nat import BLOCK_CHAIN, NAT_TABLE
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer, Relay

SESSION_PORTS = (52000, 52999)
"""``start-relay``'s default ``--port-range``."""
MODE_WAIT_S = 20.0


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    nat: str
    relay_args: tuple[str, ...]
    agent_args: tuple[str, ...] = ()
    mode: str | None = None
    """The agents' ``relay_mode`` this case must show (None: direct path)."""
    kernel: bool = False
    block: str = ""
    """At a's router: "udp" drops all UDP (a reaches the relay over TCP),
    "https" also every TCP connection but to port 443 (TLS)."""
    a_mode: str | None = None
    """a's ``relay_mode`` when it differs from ``mode`` (a over a stream; b is
    then on UDP, in ``mode`` or framed)."""


STREAM_RELAY_ARGS = ("--kernel-offload", "off", "--max-bandwidth", "0")


def only_https_rules(lan_if: str) -> str:
    """A network that lets nothing out but TCP to port 443 (as tests/system/test_streams_ns.py)."""
    return (
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} meta l4proto udp drop\n"
        f'add rule ip {NAT_TABLE} {BLOCK_CHAIN} iifname "{lan_if}" tcp dport != 443 drop\n'
    )


CASES = (
    Case("direct", "direct (no relay)", "cone", ("--max-bandwidth", "0")),
    Case(
        "port_kernel",
        "relayed, port mode + kernel offload",
        "symmetric",
        ("--kernel-offload", "on", "--max-bandwidth", "0"),
        mode="port",
        kernel=True,
    ),
    Case(
        "port_user",
        "relayed, port mode, userspace",
        "symmetric",
        ("--kernel-offload", "off", "--max-bandwidth", "0"),
        mode="port",
    ),
    Case(
        "framed",
        "relayed, framed (agents --framed-only)",
        "symmetric",
        ("--kernel-offload", "off", "--max-bandwidth", "0"),
        agent_args=("--framed-only",),
        mode="framed",
    ),
    Case(
        "tcp",
        "relayed, a over TCP (UDP blocked at a's router)",
        "symmetric",
        STREAM_RELAY_ARGS,
        mode="port",
        block="udp",
        a_mode="tcp",
    ),
    Case(
        "tls",
        "relayed, a over TLS (only TCP 443 out of a's network)",
        "symmetric",
        (*STREAM_RELAY_ARGS, "--tls-self-signed"),
        mode="port",
        block="https",
        a_mode="tls",
    ),
)


class IperfFailed(RuntimeError):
    """One iperf3 run reported an error (e.g. the server still busy): retried."""


class WrongMode(RuntimeError):
    """A case did not run in the mode it claims: its figure would be a lie."""


def iperf(a: Peer, b: Peer, seconds: int) -> tuple[float, int]:
    """Mbit/s received and TCP retransmits of one iperf3 run a -> b."""
    server = b.popen(["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf")
    # the port, not the log: the log of an earlier run may already say "listening"
    if not wait_until(lambda: ":5201 " in b.ns.run(["ss", "-ltnH"]).stdout, 5):
        raise RuntimeError("iperf3 server did not start")
    res = a.ns.run(
        ["iperf3", "-c", b.tunnel_address, "-t", str(seconds), "-J"], timeout=seconds + 30
    )
    server.stop()
    try:
        report = json.loads(res.stdout)
        end = report["end"]
        end["sum_received"]  # absent when iperf3 reports an error
    except (ValueError, KeyError):
        raise IperfFailed(f"iperf3 failed: {res.stdout[-300:]} {res.stderr[-300:]}") from None
    return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0))


# ---------------------------------------------------------------- mode checks


def offload_table(relay: Relay) -> dict[str, Any] | None:
    return bench_common.offload_table(relay.ns.name)


def relay_mode(sc: MeshScenario, me: Peer) -> tuple[str | None, str | None]:
    """(path, relay_mode) of ``me``'s only peer in its agent's status."""
    peers = (sc.status(me) or {}).get("peers") or [{}]
    p = peers[0] if isinstance(peers, list) and peers else {}
    return p.get("path"), p.get("relay_mode")


def mode_problems(sc: MeshScenario, case: Case, relay: Relay, a: Peer, b: Peer) -> list[str]:
    """Why the testbed is not in ``case``'s mode right now (empty: it is)."""
    bad: list[str] = []
    for me, other in ((a, b), (b, a)):
        path, mode = relay_mode(sc, me)
        ep = sc.wg_peer(me, other).endpoint
        if case.mode is None:
            if path != "direct":
                bad.append(f"{me.name}: path {path!r}, not direct")
            continue
        modes = {case.a_mode} if me is a and case.a_mode else {case.mode}
        if case.a_mode and me is b:
            modes.add("framed")  # the relay may or may not offer b a port here
        if path != "relayed" or mode not in modes:
            bad.append(f"{me.name}: path {path!r}, relay_mode {mode!r}; want relayed/{modes}")
        if mode == "port":
            if (
                ep is None
                or ep[0] != relay.address
                or not (SESSION_PORTS[0] <= ep[1] <= SESSION_PORTS[1])
            ):
                bad.append(f"{me.name}: WireGuard endpoint {ep}, not a session port of the relay")
        elif ep is None or ep[0] != "127.0.0.1":
            bad.append(f"{me.name}: WireGuard endpoint {ep}, not the agent's 127.0.0.1 proxy")
    table = offload_table(relay)
    if case.kernel:
        ports = {sc.wg_peer(a, b).endpoint, sc.wg_peer(b, a).endpoint}
        want = {ep[1] for ep in ports if ep is not None}
        mapped = mapped_ports(table, SESSION_PORTS)
        if not want or not want <= mapped:
            bad.append(f"offload table maps {sorted(mapped)}, want {sorted(want)}")
    elif table is not None:
        bad.append("an offload table exists though this case forwards in userspace")
    return bad


def wait_for_mode(sc: MeshScenario, case: Case, relay: Relay, a: Peer, b: Peer) -> None:
    problems: list[str] = []

    def ok() -> bool:
        nonlocal problems
        problems = mode_problems(sc, case, relay, a, b)
        return not problems

    if not wait_until(ok, MODE_WAIT_S, interval=0.5):
        raise WrongMode(f"{case.key}: not in the claimed mode: " + "; ".join(problems))


# ---------------------------------------------------------------- runs


@dataclass
class Row:
    case: Case
    rates: list[float]
    retrans: list[int]
    note: str


def run_case(case: Case, seconds: int, reps: int) -> Row:
    with Testbed(wireguard_log_level="error") as tb:
        [relay], a, b = two_peers(tb, case.nat)
        if case.mode is None:
            a.router.open_port_forward(a.listen_port)
            b.router.open_port_forward(b.listen_port)
        if case.kernel:
            relay.ns.sysctl("net.ipv4.ip_forward", "1")  # the bench's own namespace
        if case.block == "udp":
            a.block_udp()
        elif case.block == "https":
            a.router.ns.nft(only_https_rules(a.router.LAN_IF))
        sc = MeshScenario(tb)
        sc.start_relay(relay, *case.relay_args)
        sc.start_agent(a, *case.agent_args)
        sc.start_agent(b, *case.agent_args)
        if sc.wait_ping(a, b, timeout=20) is None:
            raise RuntimeError(f"{case.key}: tunnel did not come up:\n{sc.agent_log(a)[-2000:]}")
        wait_for_mode(sc, case, relay, a, b)
        time.sleep(1)  # let the agents settle on their path before measuring
        before = forwarded_packets(offload_table(relay))
        rates, retrans = [], []
        for _ in range(reps):
            try:
                mbit, rt = iperf(a, b, seconds)
            except IperfFailed as e:
                print(f"  {e}; once more", file=sys.stderr, flush=True)
                time.sleep(1)
                mbit, rt = iperf(a, b, seconds)
            rates.append(mbit)
            retrans.append(rt)
        problems = mode_problems(sc, case, relay, a, b)
        if problems:
            raise WrongMode(f"{case.key}: left its mode during the runs: " + "; ".join(problems))
        note = ""
        if case.mode is not None:
            _, mode = relay_mode(sc, a)
            ep = sc.wg_peer(a, b).endpoint
            note = f"relay_mode {mode}, endpoint {ep[0]}:{ep[1]}" if ep else f"relay_mode {mode}"
            if case.a_mode:
                _, b_mode = relay_mode(sc, b)
                note = f"a: {note}; b: relay_mode {b_mode}"
        if case.kernel:
            fwd = forwarded_packets(offload_table(relay)) - before
            if fwd < 1000 * reps:
                raise WrongMode(f"{case.key}: the kernel forwarded only {fwd} packets")
            note += f", {fwd} packets forwarded by nftables"
        return Row(case, rates, retrans, note)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of: " + ",".join(c.key for c in CASES))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("testbed iperf3 comparison skipped: needs root (network namespaces)")
        return 0
    only = set(filter(None, args.only.split(",")))
    unknown = only - {c.key for c in CASES}
    if unknown:
        ap.error(f"unknown --only keys: {sorted(unknown)}")
    rows: list[Row] = []
    failed: dict[str, str] = {}
    for case in CASES:
        if only and case.key not in only:
            continue
        print(f"== {case.label}", file=sys.stderr, flush=True)
        try:
            rows.append(run_case(case, args.seconds, args.reps))
        except (RuntimeError, OSError) as e:  # WrongMode too: report it, then fail
            failed[case.key] = str(e)
            print(f"  FAILED: {e}", file=sys.stderr, flush=True)
    print(
        f"\niperf3 TCP a -> b through wireguard-go, {args.seconds} s x {args.reps} runs,"
        " all cases in this one run\n"
    )
    print("| path | Mbit/s (median) | ÷ direct | runs | TCP retransmits (median) | checked |")
    print("|---|---:|---:|---|---:|---|")
    direct = next((statistics.median(r.rates) for r in rows if r.case.key == "direct"), None)
    for r in rows:
        med = statistics.median(r.rates)
        ratio = f"{med / direct:.2f}" if direct else "-"
        runs = ", ".join(f"{x:.0f}" for x in r.rates)
        print(
            f"| {r.case.label} | {med:.0f} | {ratio} | {runs} |"
            f" {statistics.median(r.retrans):.0f} | {r.note or 'path direct'} |"
        )
    for key, why in failed.items():
        print(f"\n**{key} FAILED:** {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
