"""Does a stuck stream client slow everyone else? Another session's rate and round trip.

One relay (``wgrelay start-relay --max-bandwidth 0``, TCP on its UDP port's
number), one run, several rounds; in each round, side by side:

* **alone**: session E<->F (UDP, framed) measured by ``bench/build/udpgen``
  (throughput, closed loop, and round trip), nothing else on the relay;
* **stuck C flooded**: the same while client C, connected over TCP, never reads
  its socket and D (UDP) sends it ``--flood-rate`` frames/s of 1400 B: the relay
  holds C's 256 KiB of unsent bytes and drops the rest (counted as
  ``stream_backpressure``, read from its /metrics);
* **reading C flooded**: the same flood to a C that reads (the control: what the
  flood itself costs the relay, whether or not C is stuck).

The flood starts before E<->F are measured, and for the stuck case the
measurement starts only once the relay drops C's frames. Peers C and D are
``bench/stream_peer.py`` processes; they and udpgen run on CPU 0, the relay on
CPU 1 (as in ``relay_bench.py``), so D's sending also takes generator time in
both flooded cases alike.

    .venv/bin/python bench/stream_backpressure.py [--rounds 3] [--flood-rate 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relay_bench import PROCS, UDPGEN, log, machine, run_udpgen, stopped_on_exit, wait_quiet
from stream_throughput import PeerProc, StreamRelay, open_session, relay_counts

BENCH = Path(__file__).resolve().parent
CASES = ("alone", "stuck", "reading")
LABELS = {
    "alone": "E<->F alone",
    "stuck": "E<->F, stuck TCP client C flooded",
    "reading": "E<->F, reading TCP client C flooded",
}


def measure_ef(relay: StreamRelay, o: argparse.Namespace) -> dict[str, Any]:
    tput = ["tput", "--size", str(o.size), "--duration", str(o.seconds), "--warmup", "0.5"]
    tput += ["--window", "64", "--batch", "32"]
    r = run_udpgen(relay.target, tput, timeout=o.seconds + 20)
    lat = run_udpgen(
        relay.target,
        ["lat", "--size", "64", "--count", str(o.lat_count), "--gap-us", "200"],
        timeout=60,
    )
    return {
        "pps": r["pps"],
        "mbps": r["mbps"],
        "relay_cpu": r["watch_cpu_pct"],
        "lost": r["lost"] + lat["lost"],
        "p50": lat["p50_us"],
        "p99": lat["p99_us"],
    }


def one_case(relay: StreamRelay, case: str, o: argparse.Namespace) -> dict[str, Any]:
    peers: list[PeerProc] = []
    try:
        if case != "alone":
            # long enough for both measurements; stopped (by PID) right after them
            span = ["--seconds", "60", "--size", "1400"]
            c = PeerProc(relay, "tcp", "stuck" if case == "stuck" else "recv", *span)
            peers.append(c)
            d = PeerProc(relay, "udp", "send", *span, "--rate", str(o.flood_rate))
            peers.append(d)
            open_session(d, c)
            c.tell("go")
            d.tell("go")
            if case == "stuck":
                deadline = time.monotonic() + 30
                while relay_counts(relay)[1] == 0:  # the relay holds its limit
                    if time.monotonic() > deadline:
                        raise RuntimeError("the relay never dropped the stuck client's frames")
                    time.sleep(0.1)
            else:
                time.sleep(1.0)  # the flood flows
        fwd0, bp0 = relay_counts(relay)
        t0 = time.monotonic()
        r = measure_ef(relay, o)
        fwd1, bp1 = relay_counts(relay)
        wall = time.monotonic() - t0
        for p in peers:
            if p.proc.poll() is not None:
                raise RuntimeError(f"peer ({p.what}) ended early (rc {p.proc.returncode})")
    finally:
        for p in peers:
            p.stop()
    r.update(
        case=case,
        backpressure_drops=bp1 - bp0,
        relay_frames_per_s=(fwd1 - fwd0) / wall,
    )
    return r


def cell(xs: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def render(runs: list[dict[str, Any]], o: argparse.Namespace) -> str:
    out = [
        f"| case | E->F {o.size} B pkt/s | Mbit/s | relay CPU % | RTT p50 µs | RTT p99 µs"
        " | C's frames dropped at the relay | E/F lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med: dict[str, dict[str, float]] = {}
    for case in CASES:
        rs = [r for r in runs if r["case"] == case]
        if not rs:
            continue
        med[case] = {k: statistics.median(r[k] for r in rs) for k in ("pps", "p50", "p99")}
        cpu = [r["relay_cpu"] for r in rs if r["relay_cpu"] is not None]
        out.append(
            f"| {LABELS[case]} | {cell([r['pps'] / 1000 for r in rs], '{:.0f}k')}"
            f" | {statistics.median(r['mbps'] for r in rs):.0f}"
            f" | {statistics.median(cpu) if cpu else '-'}"
            f" | {cell([r['p50'] for r in rs])} | {cell([r['p99'] for r in rs])}"
            f" | {sum(r['backpressure_drops'] for r in rs)} | {sum(r['lost'] for r in rs)} |"
        )
    out += ["", "| ratio (medians, same run) | pkt/s | RTT p50 | RTT p99 |", "|---|---:|---:|---:|"]
    for num, den in (("stuck", "alone"), ("reading", "alone"), ("stuck", "reading")):
        if num in med and den in med:
            a, b = med[num], med[den]
            out.append(
                f"| {num} ÷ {den} | {a['pps'] / b['pps']:.2f} | {a['p50'] / b['p50']:.2f}"
                f" | {a['p99'] / b['p99']:.2f} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=3, help="each case once per round")
    ap.add_argument("--seconds", type=float, default=3.0, help="udpgen tput seconds")
    ap.add_argument("--size", type=int, default=1400, help="E<->F payload bytes")
    ap.add_argument("--lat-count", type=int, default=2000)
    ap.add_argument("--flood-rate", type=float, default=20000, help="D -> C frames/s")
    ap.add_argument("--quiet-wait", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    o = ap.parse_args(argv)
    if not UDPGEN.exists():
        subprocess.run(["make", "-C", str(BENCH)], check=True)
    runs: list[dict[str, Any]] = []
    relay = StreamRelay()
    with stopped_on_exit():
        relay.start()
        try:
            for rnd in range(o.rounds):
                for case in CASES:
                    wait_quiet(o.quiet_wait)
                    r = one_case(relay, case, o)
                    r["round"] = rnd
                    runs.append(r)
                    log(
                        f"  round {rnd} {case:8s}: {r['pps']:>8.0f} pkt/s  p50 {r['p50']:.0f}"
                        f" p99 {r['p99']:.0f} µs  relay CPU {r['relay_cpu']}%  C's drops"
                        f" {r['backpressure_drops']}  lost {r['lost']}"
                    )
        finally:
            relay.stop()
    info = machine()
    print(f"\nanother session beside a stuck stream client, {info}")
    print(
        f"{o.rounds} rounds, each case once per round; E<->F: udpgen tput {o.size} B"
        f" (window 64, 0.5 s + {o.seconds} s) and lat (64 B, {o.lat_count} probes);"
        f" flood D -> C {o.flood_rate:.0f} frames/s of 1400 B; median (min-max)\n"
    )
    print(render(runs, o))
    if o.json is not None:
        o.json.write_text(json.dumps({"machine": info, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        PROCS.stop_all()
        sys.exit(130)
