#!/usr/bin/env python3
"""Relayed vs direct WireGuard throughput on the namespace testbed (root only).

Two testbeds, same machine, same run, iperf3 TCP through wireguard-go:

* **direct**: both peers behind port-preserving NAT with a port forward to each
  WireGuard port; the agents find the direct path (no relay session is used);
* **relayed**: both peers behind symmetric NAT; the agents relay through
  ``wgrelay start-relay --max-bandwidth 0`` (uncapped, to measure the path, not
  the quota).

    .venv/bin/python bench/testbed_iperf.py [--seconds 5] [--reps 3]

Prints a markdown table. Every namespace and process is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer


def iperf(a: Peer, b: Peer, seconds: int) -> tuple[float, int]:
    """Mbit/s received and TCP retransmits of one iperf3 run a -> b."""
    server = b.popen(["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf")
    if not wait_until(lambda: "listening" in server.read_log().lower(), 5):
        raise RuntimeError("iperf3 server did not start")
    res = a.ns.run(
        ["iperf3", "-c", b.tunnel_address, "-t", str(seconds), "-J"], timeout=seconds + 30
    )
    report = json.loads(res.stdout)
    server.stop()
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", 0))


def run_case(kind: str, seconds: int, reps: int) -> tuple[list[float], list[int], str]:
    with Testbed(wireguard_log_level="error") as tb:
        [relay], a, b = two_peers(tb, "cone" if kind == "direct" else "symmetric")
        if kind == "direct":
            a.router.open_port_forward(a.listen_port)
            b.router.open_port_forward(b.listen_port)
        sc = MeshScenario(tb)
        sc.start_relay(relay, "--max-bandwidth", "0")
        sc.start_agent(a)
        sc.start_agent(b)
        if sc.wait_ping(a, b, timeout=20) is None:
            raise RuntimeError(f"{kind}: tunnel did not come up:\n{sc.agent_log(a)[-2000:]}")
        time.sleep(1)  # let the agents settle on their path before measuring
        status = sc.status(a) or {}
        path = status.get("peers", [{}])[0].get("path", "?")  # type: ignore[index]
        rates, retrans = [], []
        for _ in range(reps):
            mbit, rt = iperf(a, b, seconds)
            rates.append(mbit)
            retrans.append(rt)
        return rates, retrans, str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("testbed iperf3 comparison skipped: needs root (network namespaces)")
        return 0
    rows = []
    for kind in ("direct", "relayed"):
        rates, retrans, path = run_case(kind, args.seconds, args.reps)
        rows.append((kind, path, rates, retrans))
    print(
        f"\niperf3 TCP a -> b through wireguard-go, {args.seconds} s x {args.reps} runs, median\n"
    )
    print("| path | agent's path | Mbit/s (median) | runs | TCP retransmits (median) |")
    print("|---|---|---:|---|---:|")
    med = {}
    for kind, path, rates, retrans in rows:
        med[kind] = statistics.median(rates)
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"| {kind} | {path} | {med[kind]:.0f} | {runs} | {statistics.median(retrans):.0f} |")
    print(f"\nrelayed / direct: {med['relayed'] / med['direct']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
