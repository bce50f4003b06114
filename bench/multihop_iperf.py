#!/usr/bin/env python3
"""Multi-hop vs one relay: WireGuard throughput on the namespace testbed (root only).

Four testbeds, same machine, same run, iperf3 TCP a -> b through wireguard-go,
every relay ``--max-bandwidth 0`` (uncapped: the path is measured, not the quota):

* **one relay, kernel**: both peers behind symmetric NAT reach relay r1; port
  mode, the relay forwarding in the kernel (``--kernel-offload on``);
* **one relay, userspace**: the same with ``--kernel-offload off``;
* **two relays, kernel**: a reaches only r1, b only r2 (the multi-hop
  picture, ``wgrelay.testbed.multihop``): A-R1-R2-B, the leg port to port,
  both relays forwarding in the kernel;
* **two relays, userspace**: the same with ``--kernel-offload off``.

Each case is checked to run as it claims before its figure counts: a kernel
case's offload tables (one per relay on the path) must carry the traffic, a
userspace case must have none, and a two-relay case's agents must be carried
by their own relays.

    .venv/bin/python bench/multihop_iperf.py [--seconds 5] [--reps 3]

Prints a markdown table with each case's ratio to "one relay, kernel".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

from bench_common import forwarded_packets, offload_table
from testbed_iperf import IperfFailed, iperf

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.multihop import start_two_relays
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer, Relay


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    relays: int
    kernel: bool


CASES = (
    Case("one_kernel", "one relay, kernel", 1, True),
    Case("one_user", "one relay, userspace", 1, False),
    Case("two_kernel", "two relays (A-R1-R2-B), kernel", 2, True),
    Case("two_user", "two relays (A-R1-R2-B), userspace", 2, False),
)


def relay_args(case: Case) -> tuple[str, ...]:
    return ("--max-bandwidth", "0", "--kernel-offload", "on" if case.kernel else "off")


def setup(tb: Testbed, case: Case) -> tuple[MeshScenario, list[Relay], Peer, Peer]:
    if case.relays == 2:
        net = start_two_relays(tb, *relay_args(case), kernel=case.kernel)
        for p in (net.a, net.b):
            net.sc.start_agent(p, relays=[])
        return net.sc, [net.r1, net.r2], net.a, net.b
    [relay], a, b = two_peers(tb, "symmetric")
    if case.kernel:
        relay.ns.sysctl("net.ipv4.ip_forward", "1")
    sc = MeshScenario(tb)
    sc.start_relay(relay, *relay_args(case))
    sc.start_agent(a)
    sc.start_agent(b)
    return sc, [relay], a, b


def carried_by_own_relays(sc: MeshScenario, a: Peer, b: Peer) -> bool:
    keys = []
    for p in (a, b):
        st = sc.status(p)
        peers = st.get("peers") if st else None
        keys.append(peers[0].get("relay") if isinstance(peers, list) and peers else None)
    return keys == [str(sc.relays["r1"].key), str(sc.relays["r2"].key)]


def forwarded(relays: list[Relay]) -> list[int]:
    return [forwarded_packets(offload_table(r.ns.name)) for r in relays]


@dataclass
class Row:
    case: Case
    rates: list[float]
    note: str


def run_case(case: Case, seconds: int, reps: int) -> Row:
    with Testbed(wireguard_log_level="error") as tb:
        sc, relays, a, b = setup(tb, case)
        if sc.wait_ping(a, b, timeout=45) is None:
            raise RuntimeError(f"{case.key}: tunnel did not come up:\n{sc.agent_log(a)[-2000:]}")
        if case.relays == 2 and not wait_until(lambda: carried_by_own_relays(sc, a, b), 15):
            raise RuntimeError(f"{case.key}: not carried A-R1-R2-B: {sc.status(a)}")
        time.sleep(1)  # let the agents settle on their path before measuring
        before = forwarded(relays)
        rates = []
        for _ in range(reps):
            try:
                mbit, _ = iperf(a, b, seconds)
            except IperfFailed as e:
                print(f"  {e}; once more", file=sys.stderr, flush=True)
                mbit, _ = iperf(a, b, seconds)
            rates.append(mbit)
        fwd = [x - y for x, y in zip(forwarded(relays), before, strict=True)]
        if case.kernel and min(fwd) < 1000 * reps:
            raise RuntimeError(f"{case.key}: the kernel forwarded only {fwd} packets per relay")
        if not case.kernel and any(offload_table(r.ns.name) is not None for r in relays):
            raise RuntimeError(f"{case.key}: an offload table exists in a userspace case")
        note = f"nftables forwarded {', '.join(map(str, fwd))} packets" if case.kernel else ""
        return Row(case, rates, note or "no offload table")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("multi-hop iperf3 comparison skipped: needs root (network namespaces)")
        return 0
    rows: list[Row] = []
    for case in CASES:
        print(f"== {case.label}", file=sys.stderr, flush=True)
        rows.append(run_case(case, args.seconds, args.reps))
    print(
        f"\niperf3 TCP a -> b through wireguard-go, {args.seconds} s x {args.reps} runs, one run\n"
    )
    print("| path | Mbit/s (median) | ÷ one relay, kernel | runs | checked |")
    print("|---|---:|---:|---|---|")
    base = statistics.median(rows[0].rates)
    for r in rows:
        med = statistics.median(r.rates)
        runs = ", ".join(f"{x:.0f}" for x in r.rates)
        print(f"| {r.case.label} | {med:.0f} | {med / base:.2f} | {runs} | {r.note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
