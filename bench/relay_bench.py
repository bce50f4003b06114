"""``make bench``: wgrelay's forwarding rate and round trip, side by side with baselines.

In one run, on loopback only, with the same generator and the same framing:

* **direct**: the generator sends to itself, no relay (the ceiling; the kernel
  work runs in the generator's own context on CPU 0);
* **pyforwarder**: ``bench/pyforwarder.py``, a bare blocking ``recvfrom``/``sendto``
  loop with wgrelay's 10-byte data header (what any Python relay costs at least);
* **wgrelay**: ``wgrelay start-relay --open --max-bandwidth 0`` (the real relay,
  with its event loop, control plane and per-session accounting).

Throughput is ``bench/build/udpgen tput``: closed loop, at most ``--window``
packets in flight, so the figure is a zero-loss rate; counted at peer B; Mbit/s
counts payload bytes (the WireGuard packet), the 10-byte header is on top.
Round trip is ``udpgen lat``: one 64-byte probe in flight, A -> relay -> B -> relay
-> A (direct: A -> B -> A with B in a thread on CPU 1).

Placement: generator ``taskset -c 0``, relay or forwarder ``taskset -c 1``. The
generator reports its own CPU use and the relay's (``--watch-pid``), so each row
says which side was the bottleneck.

    make bench                                     # from the repo root
    .venv/bin/python bench/relay_bench.py --reps 5 --duration 5
    .venv/bin/python bench/relay_bench.py --only wgrelay --relay-src /tmp/scratch/src

Every process it starts is stopped by its PID, also on error, SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import bench_common
from relay_pair import Addr, Pair, loopback_endpoint, open_forwarder_pair, open_wgrelay_pair

from wgrelay.keys import PublicKey

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
UDPGEN = BENCH / "build" / "udpgen"
VENV_BIN = ROOT / ".venv" / "bin"
GEN_CPU, RELAY_CPU = "0", "1"
READY_TIMEOUT_S = 20.0
RELAY_READY = re.compile(r"relay (\S+) listening on (\S+)")
FWD_READY = re.compile(r"ready (\S+)")

Result = dict[str, Any]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Processes:
    """Every child we start, so that each one is stopped by its PID, whatever happens."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
        self.running.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> int:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
        if p in self.running:
            self.running.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in list(self.running):
            try:
                self.stop(p)
            except Exception as e:  # keep going: the others must stop too
                log(f"could not stop pid {p.pid}: {e}")


PROCS = Processes()


def wait_for_line(p: subprocess.Popen[bytes], pattern: re.Pattern[str]) -> re.Match[str]:
    """Read the child's stdout until ``pattern`` matches (its 'ready' line)."""
    return bench_common.wait_for_line(p, pattern, READY_TIMEOUT_S)


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """Something between A and B. ``open_pair`` gives registered sockets, or None."""

    key: str
    label: str
    proc: subprocess.Popen[bytes] | None = None
    endpoint: Addr | None = None
    note: str = ""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None

    def open_pair(self) -> Pair | None:
        return None

    def gen_args(self, pair: Pair | None) -> list[str]:
        assert pair is not None
        assert self.endpoint is not None
        return pair.udpgen_args(self.endpoint)

    def lat_args(self) -> list[str]:
        return []


class Direct(Target):
    def gen_args(self, pair: Pair | None) -> list[str]:
        return ["--dst", "self"]

    def lat_args(self) -> list[str]:
        # B as a thread on the relay's CPU: each direction then pays one
        # cross-CPU wake-up, as it does through a relay
        return ["--echo-cpu", RELAY_CPU]


class Forwarder(Target):
    def start(self) -> None:
        self.proc = PROCS.start(
            ["taskset", "-c", RELAY_CPU, sys.executable, str(BENCH / "pyforwarder.py")],
            stdout=subprocess.PIPE,
        )
        m = wait_for_line(self.proc, FWD_READY)
        self.endpoint = loopback_endpoint(m.group(1))

    def open_pair(self) -> Pair:
        assert self.endpoint is not None
        # a fresh session per run, as the relay gives: a run never inherits a route
        return open_forwarder_pair(self.endpoint, os.urandom(8))


@dataclass
class Wgrelay(Target):
    relay_src: Path | None = None
    relay_key: PublicKey | None = None
    workdir: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="wgrelay-bench-"))
        args = ["start-relay", "--open", "--bind", "127.0.0.1", "--port", "0"]
        args += ["--max-bandwidth", "0", "--state-dir", str(self.workdir / "state")]
        args += self.extra_args
        env = dict(os.environ)
        if self.relay_src is not None:
            # a scratch copy of src/ (see docs/PERFORMANCE.md): same interpreter, other code
            cmd = [sys.executable, "-m", "wgrelay", *args]
            env["PYTHONPATH"] = str(self.relay_src)
        else:
            cmd = [str(VENV_BIN / "wgrelay"), *args]
        with (self.workdir / "relay.log").open("wb") as err:
            self.proc = PROCS.start(
                ["taskset", "-c", RELAY_CPU, *cmd], stdout=subprocess.PIPE, stderr=err, env=env
            )
        try:
            m = wait_for_line(self.proc, RELAY_READY)
        except RuntimeError:
            log((self.workdir / "relay.log").read_text()[-2000:])
            raise
        self.relay_key = PublicKey.from_base64(m.group(1))
        self.endpoint = loopback_endpoint(m.group(2).split(",")[0])

    def stop(self) -> None:
        super().stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def open_pair(self) -> Pair:
        assert self.endpoint is not None
        assert self.relay_key is not None
        return open_wgrelay_pair(self.endpoint, self.relay_key)


# ---------------------------------------------------------------- runs


def cpu_busy_fraction(interval_s: float = 0.25) -> float:
    """Busy share of all CPUs over ``interval_s`` (from /proc/stat), 0..1."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)  # busy (not idle, not iowait), total

    b0, t0 = sample()
    time.sleep(interval_s)
    b1, t1 = sample()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_quiet(max_wait_s: float, busy_below: float = 0.15) -> None:
    """Start a run only when the machine is idle (up to ``max_wait_s``), then go anyway.

    On a shared development machine a test suite may be running; a run that
    starts in the middle of it measures the neighbour, not the relay.
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy_fraction()
    while busy >= busy_below and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = cpu_busy_fraction()
    if busy >= busy_below:
        log(f"  note: machine {busy:.0%} busy before this run (other processes)")


def run_udpgen(target: Target, mode_args: list[str], timeout: float) -> Result:
    pair = target.open_pair()
    try:
        cmd = ["taskset", "-c", GEN_CPU, str(UDPGEN), *mode_args, *target.gen_args(pair)]
        if target.proc is not None and mode_args[0] == "tput":
            cmd += ["--watch-pid", str(target.proc.pid)]
        p = PROCS.start(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pair.fds if pair is not None else (),
        )
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            PROCS.stop(p)
    finally:
        if pair is not None:
            pair.close()
    line = next((x for x in out.decode().splitlines() if x.startswith("{")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"udpgen failed (rc {p.returncode}): {err.decode()[-500:]}")
    result: Result = json.loads(line)
    return result


def measure(target: Target, o: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    target.start()
    try:
        for size in o.sizes:
            tput = ["tput", "--size", str(size), "--duration", str(o.duration)]
            tput += ["--warmup", str(o.warmup), "--window", str(o.window), "--batch", str(o.batch)]
            extra = o.retries  # per cell: runs disturbed by other load are repeated
            rep = 0
            while rep < o.reps:
                wait_quiet(o.quiet_wait)
                r = run_udpgen(target, tput, timeout=o.warmup + o.duration + 20)
                r.update(target=target.key, rep=rep)
                results.append(r)
                ok = saturated(r)
                log(
                    f"  tput {size:4d} B rep {rep}: {r['pps']:>9.0f} pkt/s {r['mbps']:8.1f} Mbit/s"
                    f"  cpu {r['cpu_busy_pct'][:2]} gen {r['gen_cpu_pct']}%"
                    f" relay {r['watch_cpu_pct']}%  lost {r['lost']} stalls {r['stalls']}"
                    + ("" if ok else "  (neither side saturated: not counted)")
                )
                if ok or extra == 0:
                    rep += 1
                else:
                    extra -= 1
        for rep in range(o.reps):
            wait_quiet(o.quiet_wait)
            r = run_udpgen(
                target,
                [
                    "lat",
                    "--size",
                    "64",
                    "--count",
                    str(o.lat_count),
                    "--gap-us",
                    str(o.gap_us),
                    *target.lat_args(),
                ],
                timeout=60,
            )
            r.update(target=target.key, rep=rep)
            results.append(r)
            log(
                f"  lat  rep {rep}: p50 {r['p50_us']:.1f} us  p99 {r['p99_us']:.1f} us"
                f"  lost {r['lost']}"
            )
    finally:
        target.stop()
    return results


# ---------------------------------------------------------------- report


@dataclass
class Cell:
    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, xs: list[float]) -> Cell | None:
        return cls(statistics.median(xs), min(xs), max(xs)) if xs else None


SATURATED_PCT = 95.0
"""A run counts when the relay or the generator had its core (nearly) to itself and used it."""


def saturated(r: Result) -> bool:
    """True when one side was the bottleneck, i.e. nothing else on the machine was.

    On a shared machine another process can take CPU time from the relay's or the
    generator's core; the rate of such a run measures the neighbour, not the
    relay. A run where neither side got ~100 % of its core is reported but left
    out of the median (the table says how many were kept).
    """
    relay = r["watch_cpu_pct"]
    return bool(r["gen_cpu_pct"] >= SATURATED_PCT or (relay is not None and relay >= SATURATED_PCT))


def summarize(results: list[Result], key: str, sizes: list[int]) -> dict[str, Any]:
    mine = [r for r in results if r["target"] == key]
    s: dict[str, Any] = {}
    for size in sizes:
        every = [r for r in mine if r["mode"] == "tput" and r["size"] == size]
        if not every:
            continue
        good = [r for r in every if saturated(r)]
        t = good or every
        relay_cpu = [r["watch_cpu_pct"] for r in t if r["watch_cpu_pct"] is not None]
        s[f"tput_{size}"] = {
            "pps": Cell.of([r["pps"] for r in t]),
            "mbps": Cell.of([r["mbps"] for r in t]),
            "gen_cpu": Cell.of([r["gen_cpu_pct"] for r in t]),
            "relay_cpu": Cell.of(relay_cpu),
            "cpu0": Cell.of([r["cpu_busy_pct"][0] for r in t]),
            "cpu1": Cell.of([r["cpu_busy_pct"][1] for r in t if len(r["cpu_busy_pct"]) > 1]),
            "lost": sum(r["lost"] for r in every),
            "stalls": sum(r["stalls"] for r in every),
            "kept": len(good),
            "runs": len(every),
        }
    lat = [r for r in mine if r["mode"] == "lat"]
    if lat:
        s["lat"] = {
            "p50": Cell.of([r["p50_us"] for r in lat]),
            "p99": Cell.of([r["p99_us"] for r in lat]),
            "lost": sum(r["lost"] for r in lat),
        }
    return s


def k(x: float) -> str:
    return f"{x / 1000:.0f}k" if x >= 10_000 else f"{x / 1000:.1f}k"


def bottleneck(t: dict[str, Any], key: str) -> str:
    gen, relay = t["gen_cpu"], t["relay_cpu"]
    if key == "direct":
        return "generator + kernel (one core)"
    if relay is not None and relay.median >= 90 and gen.median < 90:
        return "relay"
    if gen.median >= 90:
        return "generator (lower bound)"
    return "neither saturated: other load on the machine?"


def render(
    summary: dict[str, dict[str, Any]], labels: dict[str, str], o: argparse.Namespace
) -> str:
    lines: list[str] = []
    head = "| path |"
    sep = "|---|"
    for size in o.sizes:
        head += f" {size} B pkt/s | {size} B Mbit/s |"
        sep += "---:|---:|"
    head += " RTT p50 µs | RTT p99 µs | gen / relay CPU % | relay µs/pkt | bound by |"
    sep += "---:|---:|---:|---:|---|"
    lines += [head, sep]
    for key, s in summary.items():
        row = f"| {labels[key]} |"
        for size in o.sizes:
            t = s.get(f"tput_{size}")
            if t is None:
                row += " - | - |"
                continue
            p = t["pps"]
            warn = " ⚠ loss" if t["lost"] or t["stalls"] else ""
            if t["kept"] < t["runs"]:
                warn += f" [{t['kept']}/{t['runs']} runs]"
            row += f" {k(p.median)} ({k(p.lo)}-{k(p.hi)}){warn} | {t['mbps'].median:.0f} |"
        lat = s.get("lat")
        if lat is not None:
            row += f" {lat['p50'].median:.0f} | {lat['p99'].median:.0f} |"
        else:
            row += " - | - |"
        t = s.get(f"tput_{o.sizes[0]}")
        if t is not None:
            rc = t["relay_cpu"]
            relay = f"{rc.median:.0f}" if rc is not None else "-"
            # CPU time of the relay process per forwarded packet (user + system)
            per_pkt = f"{rc.median * 1e4 / t['pps'].median:.2f}" if rc and t["pps"].median else "-"
            row += f" {t['gen_cpu'].median:.0f} / {relay} | {per_pkt} | {bottleneck(t, key)} |"
        else:
            row += " - | - | - |"
        lines.append(row)
    lines.append("")
    lines.append(
        f"CPU columns are for {o.sizes[0]} B. [k/n runs]: only k of n runs had the relay's or the"
        " generator's core saturated; in the others another process took CPU time, and they are"
        " left out of the median."
    )
    lines.append("")
    # ratios: the relay against each baseline, per size
    if "wgrelay" in summary:
        refs = [r for r in ("direct", "pyforwarder") if r in summary]
        if refs:
            lines.append("| ratio (median pkt/s) | " + " | ".join(f"{z} B" for z in o.sizes) + " |")
            lines.append("|---|" + "---:|" * len(o.sizes))
            for ref in refs:
                cells = []
                for size in o.sizes:
                    a = summary["wgrelay"].get(f"tput_{size}")
                    b = summary[ref].get(f"tput_{size}")
                    if a is not None and b is not None and b["pps"].median:
                        cells.append(f"{a['pps'].median / b['pps'].median:.2f}")
                    else:
                        cells.append("-")
                lines.append(f"| wgrelay ÷ {ref} | " + " | ".join(cells) + " |")
            lines.append("")
        if "lat" in summary["wgrelay"] and "direct" in summary and "lat" in summary["direct"]:
            add50 = summary["wgrelay"]["lat"]["p50"].median - summary["direct"]["lat"]["p50"].median
            add99 = summary["wgrelay"]["lat"]["p99"].median - summary["direct"]["lat"]["p99"].median
            lines.append(
                f"Round trip added by the relay (two relay passes): p50 {add50:+.0f} µs,"
                f" p99 {add99:+.0f} µs over the direct path."
            )
            lines.append("")
    return "\n".join(lines)


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loop = "asyncio"
    try:
        import uvloop  # noqa: F401  (only: which loop will the relay pick?)

        loop = "uvloop"
    except ImportError:
        pass
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({model}), "
        f"Linux {platform.release()}, Python {platform.python_version()}, relay loop {loop}"
    )


# ---------------------------------------------------------------- main


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def build_targets(o: argparse.Namespace) -> list[Target]:
    all_targets: list[Target] = [
        Direct("direct", "direct (no relay)"),
        Forwarder("pyforwarder", "Python recvfrom/sendto loop"),
        Wgrelay("wgrelay", o.label, relay_src=o.relay_src),
    ]
    only = set(filter(None, o.only.split(",")))
    unknown = only - {t.key for t in all_targets}
    if unknown:
        raise SystemExit(f"unknown --only keys: {sorted(unknown)}")
    return [t for t in all_targets if not only or t.key in only]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--reps", type=int, default=3, help="runs per cell (median reported)")
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--sizes", default="64,1400", help="payload sizes, comma separated")
    ap.add_argument("--window", type=int, default=64, help="packets in flight (closed loop)")
    ap.add_argument("--batch", type=int, default=32, help="sendmmsg/recvmmsg batch")
    ap.add_argument("--lat-count", type=int, default=2000)
    ap.add_argument("--gap-us", type=int, default=200)
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra throughput runs per cell to replace runs disturbed by other load",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each run, wait up to this many seconds for an idle machine",
    )
    ap.add_argument("--only", default="", help="comma list of: direct,pyforwarder,wgrelay")
    ap.add_argument("--relay-src", type=Path, help="run the relay from this src/ directory")
    ap.add_argument("--label", default="wgrelay start-relay", help="the relay row's label")
    ap.add_argument("--json", type=Path, help="also write every run and the summary here")
    o = ap.parse_args(argv)
    o.sizes = [int(x) for x in o.sizes.split(",")]
    o.duration = min(o.duration, 10.0)  # udpgen caps it too; keep the arithmetic honest
    return o


@contextmanager
def stopped_on_exit() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        PROCS.stop_all()
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    if os.cpu_count() is None or (os.cpu_count() or 1) < 2:
        log("note: fewer than 2 CPUs; generator and relay will share one")
    if not UDPGEN.exists():
        subprocess.run(["make", "-C", str(BENCH)], check=True)
    targets = build_targets(o)
    results: list[Result] = []
    failed: dict[str, str] = {}
    with stopped_on_exit():
        for t in targets:
            log(f"== {t.label}")
            try:
                results += measure(t, o)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                failed[t.key] = str(e)
                log(f"  FAILED: {e}")
    labels = {t.key: t.label for t in targets}
    summary = {t.key: summarize(results, t.key, o.sizes) for t in targets if t.key not in failed}
    info = machine()
    print(f"\nwgrelay relay benchmark, {info}")
    print(
        f"closed loop, window {o.window}, batch {o.batch}, {o.warmup} s warm-up + {o.duration} s"
        f" per run, {o.reps} runs per cell: median (min-max); generator CPU {GEN_CPU},"
        f" relay CPU {RELAY_CPU}; RTT: 64 B, one probe in flight, {o.gap_us} µs gap\n"
    )
    print(render(summary, labels, o))
    for key, why in failed.items():
        print(f"**{key} failed:** {why}")
    if o.json is not None:
        o.json.write_text(
            json.dumps(
                {"machine": info, "runs": results, "failed": failed, "options": vars(o)},
                indent=1,
                default=str,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        PROCS.stop_all()
        sys.exit(130)
