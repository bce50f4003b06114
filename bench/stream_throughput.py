"""The relay's forwarding rate when one side of a session is a TCP or TLS stream.

One relay (``wgrelay start-relay --max-bandwidth 0``, TCP on its UDP port's
number, TLS with a self-signed certificate), one run, these paths side by side:

* **udp -> udp**: a framed UDP session (the baseline);
* **udp -> tcp** / **udp -> tls**: the receiver is a stream client (the relay
  writes each frame to its stream);
* **tcp -> udp** / **tls -> udp**: the sender is a stream client (the relay
  splits the stream into frames and sends them as datagrams).

Every peer is a ``bench/stream_peer.py`` process on CPU 0 (sender and
receiver; the same generator for every path, so the ratios compare the relay,
not the generators), the relay on CPU 1. Closed loop: at most ``--window``
frames sent and not yet received (the receiver's count is shared with the
sender through a file in /dev/shm), so no buffer overflows and the rate is a
zero-loss rate; the receiver counts what arrives over ``--seconds`` after
``--warmup``. The relay's CPU time and its forwarded-frame counter (its
/metrics) over the same window give its cost per forwarded frame, which other
load on this shared machine disturbs less than the rate.

    .venv/bin/python bench/stream_throughput.py [--reps 3] [--sizes 64,1400] [--only udp-tcp,...]

Every process it starts is stopped by its PID, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay_bench import (
    GEN_CPU,
    PROCS,
    RELAY_CPU,
    Wgrelay,
    log,
    machine,
    stopped_on_exit,
    wait_quiet,
)

BENCH = Path(__file__).resolve().parent
PEER = BENCH / "stream_peer.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY_LINE = re.compile(r"^key (\S+)$")
BACKPRESSURE = re.compile(r'^wgrelay_drops_total\{reason="stream_backpressure"\} (\S+)', re.M)
FORWARDED = re.compile(r"^wgrelay_forwarded_packets_total (\S+)", re.M)

PATHS = ("udp-udp", "udp-tcp", "tcp-udp", "udp-tls", "tls-udp")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class StreamRelay:
    """The relay under test, with the ports of its three listeners."""

    target: Wgrelay = field(default_factory=lambda: Wgrelay("wgrelay", "wgrelay"))
    tls_port: int = 0
    metrics_port: int = 0

    def start(self) -> None:
        self.tls_port = free_tcp_port()
        self.metrics_port = free_tcp_port()
        self.target.extra_args = ["--tls-self-signed", "--tls-port", str(self.tls_port)]
        self.target.extra_args += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.target.start()

    @property
    def pid(self) -> int:
        assert self.target.proc is not None
        return self.target.proc.pid

    @property
    def udp(self) -> tuple[str, int]:
        assert self.target.endpoint is not None
        return self.target.endpoint

    def stream_port(self, carrier: str) -> int:
        return {"udp": 0, "tcp": self.udp[1], "tls": self.tls_port}[carrier]

    def stop(self) -> None:
        self.target.stop()


class PeerProc:
    """A running ``stream_peer.py`` on the generator's CPU."""

    def __init__(self, relay: StreamRelay, carrier: str, role: str, *extra: str) -> None:
        assert relay.target.relay_key is not None
        cmd = [
            "taskset",
            "-c",
            GEN_CPU,
            sys.executable,
            str(PEER),
            "--relay",
            f"{relay.udp[0]}:{relay.udp[1]}",
        ]
        cmd += ["--relay-key", str(relay.target.relay_key), "--carrier", carrier]
        cmd += ["--stream-port", str(relay.stream_port(carrier)), "--role", role, *extra]
        self.what = f"{carrier} {role}"
        # (not PROCS.start, which gives children no stdin; stopped by PROCS all the same)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        PROCS.running.append(self.proc)

    def line(self, timeout: float = 20.0) -> str:
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            raise TimeoutError(f"peer ({self.what}) said nothing in {timeout} s")
        line = out.readline().decode().strip()
        if not line:
            raise RuntimeError(f"peer ({self.what}) exited (rc {self.proc.wait()})")
        return line

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # a stuck peer exits on this
        PROCS.stop(self.proc)


def key_of(p: PeerProc) -> str:
    line = p.line()
    m = KEY_LINE.match(line)
    if m is None:
        raise RuntimeError(f"peer: expected its key, got {line!r}")
    return m.group(1)


def open_session(a: PeerProc, b: PeerProc) -> None:
    """``a`` asks for ``b``; both have the session."""
    key_of(a)
    a.tell(f"session {key_of(b)}")
    for p in (a, b):
        line = p.line()
        if not line.startswith("sid "):
            raise RuntimeError(f"peer: expected a session, got {line!r}")


def one_run(relay: StreamRelay, path: str, size: int, o: argparse.Namespace) -> dict[str, Any]:
    src, dst = path.split("-")
    counter = tempfile.NamedTemporaryFile(prefix="wgrelay-bench-", dir="/dev/shm")  # noqa: SIM115
    counter.write(bytes(8))
    counter.flush()
    common = ["--size", str(size), "--warmup", str(o.warmup), "--seconds", str(o.seconds)]
    common += ["--counter", counter.name]
    b = PeerProc(relay, dst, "recv", *common)
    a = PeerProc(relay, src, "send", *common, "--window", str(o.window))
    try:
        open_session(a, b)
        for p in (b, a):
            p.tell("go")
        time.sleep(o.warmup + 0.05)  # the receiver's window starts at its first frame
        fwd0, bp0 = relay_counts(relay)
        c0, t0 = cpu_seconds(relay.pid), time.monotonic()
        time.sleep(o.seconds)
        c1, t1 = cpu_seconds(relay.pid), time.monotonic()
        fwd1, bp1 = relay_counts(relay)
        got = json.loads(b.line(o.seconds + 10))
        sender = json.loads(a.line(10))
    finally:
        a.stop()
        b.stop()
        counter.close()
    out = (fwd1 - fwd0) - (bp1 - bp0)  # frames the relay really sent on
    cpu, wall = c1 - c0, t1 - t0
    pps = float(got["pps"])
    return {
        "path": path,
        "size": size,
        "pps": pps,
        "mbps": pps * size * 8 / 1e6,
        "relay_fps": out / wall,
        "relay_cpu_pct": 100 * cpu / wall,
        "relay_us_per_frame": cpu / out * 1e6 if out > 0 else None,
        "sent": sender["sent"],
        "stalls": sender["stalls"],
        "received": got["received"],
        "backpressure_drops": bp1 - bp0,
    }


def relay_counts(relay: StreamRelay) -> tuple[int, int]:
    """(frames forwarded, of those dropped for a full stream) so far, from its /metrics.
    The core counts a frame as forwarded before the stream refuses it."""
    url = f"http://127.0.0.1:{relay.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    fwd, bp = FORWARDED.search(text), BACKPRESSURE.search(text)
    if fwd is None:
        raise RuntimeError("the relay's metrics have no wgrelay_forwarded_packets_total")
    return int(float(fwd.group(1))), int(float(bp.group(1))) if bp else 0


def _label(path: str) -> str:
    return path.replace("-", " -> ")


def render(runs: list[dict[str, Any]], o: argparse.Namespace) -> str:
    out = [
        "| path | size | received pkt/s | Mbit/s | relay sent on, frames/s | relay CPU %"
        " | relay µs/frame | dropped (stream full) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rate: dict[tuple[str, int], float] = {}
    cost: dict[tuple[str, int], float] = {}
    for size in o.sizes:
        for path in o.paths:
            rs = [r for r in runs if r["path"] == path and r["size"] == size]
            if not rs:
                continue
            pps = [r["pps"] for r in rs]
            us = [r["relay_us_per_frame"] for r in rs if r["relay_us_per_frame"]]
            rate[path, size] = statistics.median(pps)
            if us:
                cost[path, size] = statistics.median(us)
            out.append(
                f"| {_label(path)} | {size} B | {rate[path, size] / 1000:.0f}k"
                f" ({min(pps) / 1000:.0f}k-{max(pps) / 1000:.0f}k)"
                f" | {statistics.median(r['mbps'] for r in rs):.0f}"
                f" | {statistics.median(r['relay_fps'] for r in rs) / 1000:.0f}k"
                f" | {statistics.median(r['relay_cpu_pct'] for r in rs):.0f}"
                f" | {f'{cost[path, size]:.2f} ({min(us):.2f}-{max(us):.2f})' if us else '-'}"
                f" | {sum(r['backpressure_drops'] for r in rs)} |"
            )
    if "udp-udp" not in o.paths:
        return "\n".join(out)
    out += ["", "| ÷ udp -> udp (same run) | size | received pkt/s | relay µs/frame |"]
    out.append("|---|---:|---:|---:|")
    for size in o.sizes:
        for path in o.paths:
            if path == "udp-udp" or (path, size) not in rate:
                continue
            base, bc = rate.get(("udp-udp", size)), cost.get(("udp-udp", size))
            r = f"{rate[path, size] / base:.2f}" if base else "-"
            c = f"{cost[path, size] / bc:.2f}" if bc and (path, size) in cost else "-"
            out.append(f"| {_label(path)} | {size} B | {r} | {c} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--window", type=int, default=1024, help="frames in flight (closed loop)")
    ap.add_argument("--only", default="", help="comma list of: " + ",".join(PATHS))
    ap.add_argument("--quiet-wait", type=float, default=5.0)
    ap.add_argument("--relay-src", type=Path, help="run the relay from this src/ directory")
    ap.add_argument("--json", type=Path)
    o = ap.parse_args(argv)
    o.sizes = [int(x) for x in o.sizes.split(",")]
    only = [x for x in o.only.split(",") if x]
    unknown = set(only) - set(PATHS)
    if unknown:
        ap.error(f"unknown --only paths: {sorted(unknown)}")
    o.paths = only or list(PATHS)
    runs: list[dict[str, Any]] = []
    relay = StreamRelay()
    relay.target.relay_src = o.relay_src
    with stopped_on_exit():
        relay.start()
        try:
            # rounds: every path once per round, so that slow drift of the
            # machine's other load spreads over all paths alike
            for rep in range(o.reps):
                for size in o.sizes:
                    for path in o.paths:
                        wait_quiet(o.quiet_wait)
                        r = one_run(relay, path, size, o)
                        r["rep"] = rep
                        runs.append(r)
                        log(
                            f"  {path:8s} {size:4d} B rep {rep}: {r['pps']:>9.0f} pkt/s"
                            f" (relay sent on {r['relay_fps']:.0f}/s, CPU"
                            f" {r['relay_cpu_pct']:.0f}%, {r['relay_us_per_frame'] or 0:.2f}"
                            f" µs/frame)  offered {r['sent']} received {r['received']}"
                            f" stream drops {r['backpressure_drops']} stalls {r['stalls']}"
                        )
        finally:
            relay.stop()
    info = machine()
    print(f"\nrelay forwarding over streams, {info}")
    print(
        f"closed loop, window {o.window}, {o.warmup} s warm-up + {o.seconds} s per run,"
        f" {o.reps} rounds;"
        f" peers (stream_peer.py) CPU {GEN_CPU}, relay CPU {RELAY_CPU}; median (min-max)\n"
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
