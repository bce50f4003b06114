#!/usr/bin/env python3
"""wgrelay's port mode against the shared anchors (direct, nft, socat, coturn) in ONE run.

The shared harness (``/work/shared/bench``) measures one ``x_custom`` relay per
run; comparing our userspace and kernel port modes with coturn must not span two
runs (this VM drifts a few percent between them). So this script loads the
harness's own ``bench.py`` (from a private copy, as ``run_all.sh`` makes one),
adds our relay as several targets, and runs its ``main`` once:

=====================  ==============================================================
``a2_direct_1thread``  (a) with B in the generator's thread for the round trip
``x_framed``           framed mode (10-byte header), ``bench/shared_driver.py``; loopback
``x_port_user``        port mode, userspace (``--kernel-offload off``); loopback
``x_port_user_ns``     the same in the namespace pair of ``bench/port_mode_relay.py``
``x_port_kernel``      port mode, kernel offload (``--kernel-offload on``), namespace pair
``x_port_kernel_rps``  the same, the relay namespace's veth steered to CPU 1 (RPS), so the
                       kernel's forwarding runs on the relay's core as a relay process does
=====================  ==============================================================

All use ``bench/port_mode_driver.py`` except ``x_framed``. The kernel variants
run in a namespace pair because the offload cannot forward loopback traffic
(see ``port_mode_relay.py``); every address stays in 127.0.0.0/8.

    .venv/bin/python bench/anchor_port_mode.py                 # ~6 min, prints the tables
    .venv/bin/python bench/anchor_port_mode.py --keys a_direct,d_coturn,x_port_kernel \\
        -- --reps 5 --duration 5                               # harness options after --

Harness options default to ``--reps 3 --open-rate 0 --no-samecore --no-uclient
--no-write`` when none are given. Root is needed (namespaces, nftables).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
VENV_BIN = BENCH.parent / ".venv" / "bin"
SHARED = Path("/work/shared/bench")
COPY = Path("/tmp/anchor-bench")  # noqa: S108  (where run_all.sh puts its private copy)
STATE = "/tmp/wgrelay-port-bench"  # noqa: S108
DEFAULT_KEYS = (
    "a_direct,a2_direct_1thread,b2_nft_stateless,c_socat,d_coturn,"
    "x_framed,x_port_user,x_port_user_ns,x_port_kernel,x_port_kernel_rps"
)
QUIET_BELOW = 0.15
DEFAULT_HARNESS_ARGS = ["--reps", "3", "--open-rate", "0", "--no-samecore", "--no-uclient"]


def load_harness(src: Path, copy: Path) -> Any:
    """The harness's bench.py, imported from a writable private copy."""
    if not (copy / "bench.py").exists():
        shutil.copytree(src, copy)
    spec = importlib.util.spec_from_file_location("anchor_bench", copy / "bench.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {copy / 'bench.py'}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["anchor_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def our_targets(h: Any) -> list[Any]:
    """wgrelay, as subclasses of the harness's Custom target (one per mode)."""
    py = str(VENV_BIN / "python")
    relay = str(VENV_BIN / "wgrelay")
    launcher = str(BENCH / "port_mode_relay.py")

    class Ours(h.Custom):  # type: ignore[misc]
        optional = True
        state = ""
        driver_script = str(BENCH / "port_mode_driver.py")

        def available(self) -> str | None:
            return None

        def gen_cmd(self, args: list[str]) -> list[str]:
            return [py, self.driver_script, "--state-dir", self.state,
                    "--relay", f"{h.HOST}:{h.RELAY_PORT}", "--", str(h.GEN), *args]  # fmt: skip

    class DirectOneThread(h.Direct):  # type: ignore[misc]
        """Round trip with B in the generator's own thread: the baseline for a
        kernel path that runs in the sender's context (no cross-CPU wake-up)."""

        key = "a2_direct_1thread"
        label = "(a') no relay; round trip with B in the generator's thread"
        lat_echo_thread = False
        optional = True

    def make(key: str, label: str, cmd: str, state: str, driver: str | None = None) -> Any:
        t = Ours()
        t.key, t.label, t.cmd, t.state = key, label, cmd, state
        if driver is not None:
            t.driver_script = driver
        return t

    loop = f"{relay} start-relay --open --bind 127.0.0.1 --port {{port}} --max-bandwidth 0"
    ns = f"{py} {launcher} --port {{port}}"
    return [
        DirectOneThread(),
        make(
            "x_framed",
            "(x) wgrelay framed (10 B header), userspace",
            f"{loop} --kernel-offload off --state-dir {STATE}-f",
            f"{STATE}-f",
            driver=str(BENCH / "shared_driver.py"),
        ),
        make(
            "x_port_user",
            "(x) wgrelay port mode, userspace",
            f"{loop} --kernel-offload off --state-dir {STATE}-u",
            f"{STATE}-u",
        ),
        make(
            "x_port_user_ns",
            "(x) wgrelay port mode, userspace, ns pair",
            f"{ns} --kernel-offload off --state-dir {STATE}-un",
            f"{STATE}-un",
        ),
        make(
            "x_port_kernel",
            "(x) wgrelay port mode, kernel offload, ns pair",
            f"{ns} --kernel-offload on --state-dir {STATE}-k",
            f"{STATE}-k",
        ),
        make(
            "x_port_kernel_rps",
            "(x) wgrelay port mode, kernel offload, ns pair, RPS to CPU1",
            f"{ns} --kernel-offload on --rps-cpus 2 --state-dir {STATE}-kr",
            f"{STATE}-kr",
        ),
    ]


def cpu_busy_fraction(interval_s: float = 0.25) -> float:
    """Busy share of all CPUs over ``interval_s`` (from /proc/stat), 0..1."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = sample()
    time.sleep(interval_s)
    b1, t1 = sample()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def quiet_first(run_gen: Any, max_wait_s: float) -> Any:
    """The harness's run_gen, started only once the machine is idle (up to
    ``max_wait_s``): this machine is shared with test suites, and a run that
    starts in the middle of one measures the neighbour (as relay_bench.py does)."""

    def wrapped(target: Any, args: list[str], timeout: float) -> Any:
        deadline = time.monotonic() + max_wait_s
        busy = cpu_busy_fraction()
        while busy >= QUIET_BELOW and time.monotonic() < deadline:
            time.sleep(0.5)
            busy = cpu_busy_fraction()
        if busy >= QUIET_BELOW:
            print(f"  note: machine {busy:.0%} busy before this run", file=sys.stderr)
        return run_gen(target, args, timeout)

    return wrapped


def verdicts(summary: dict[str, Any]) -> list[str]:
    """The issue's targets, from the run's own summary (ratios within this run)."""

    def pps(key: str, size: int) -> float | None:
        x = summary.get(key, {}).get(f"tput_{size}", {}).get("pps")
        return float(x["median"]) if x else None

    def p50(key: str) -> float | None:
        x = summary.get(key, {}).get("lat_split", {}).get("p50")
        return float(x["median"]) if x else None

    out = ["| target | figure | met? |", "|---|---|---|"]
    for key, want in (("x_port_kernel", 2.0), ("x_port_kernel_rps", 2.0), ("x_port_user", 1.0)):
        for size in (64, 1400):
            a, c = pps(key, size), pps("d_coturn", size)
            if a is None or c is None:
                continue
            cell = summary[key][f"tput_{size}"]
            gen_bound = cell["cpu0"]["median"] >= 95
            met = a / c >= want
            note = " (generator core saturated)" if gen_bound else ""
            verdict = "yes" if met else "NO"
            out.append(f"| {key} >= {want:g}x coturn, {size} B | {a / c:.2f}x{note} | {verdict} |")
    # the kernel path without RPS runs in the generator's thread: its baseline
    # is direct with B in that thread too; the others cross to CPU 1 as (a) does
    for key, base, limit in (
        ("x_port_kernel", "a2_direct_1thread", 30.0),
        ("x_port_kernel_rps", "a_direct", 30.0),
        ("x_port_user", "a_direct", None),
        ("x_framed", "a_direct", None),
    ):
        r, d = p50(key), p50(base)
        if r is None or d is None:
            continue
        ok = "-" if limit is None else ("yes" if r - d <= limit else "NO")
        target = "<= 30 µs" if limit is not None else "(no target)"
        out.append(
            f"| {key}: round trip added over {base}, p50 {target} | {r:.1f} - {d:.1f} ="
            f" {r - d:+.1f} µs | {ok} |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--keys", default=DEFAULT_KEYS, help="targets (harness keys and ours)")
    ap.add_argument("--harness", type=Path, default=SHARED, help="the shared harness")
    ap.add_argument("--copy", type=Path, default=COPY, help="its private, writable copy")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each run, wait up to this many seconds for an idle machine (0: never)",
    )
    ap.add_argument("harness_args", nargs="*", help="options for bench.py (after --)")
    o = ap.parse_args()
    h = load_harness(o.harness, o.copy)
    ours = our_targets(h)
    h.TARGETS.extend(ours)
    if o.quiet_wait > 0:
        h.run_gen = quiet_first(h.run_gen, o.quiet_wait)
    extra = o.harness_args or DEFAULT_HARNESS_ARGS
    if "--no-write" not in extra:
        extra = [*extra, "--no-write"]
    sys.argv = ["bench.py", "--only", o.keys, *extra]
    resdir = o.copy / "results"
    before = set(resdir.glob("summary-*.json")) if resdir.exists() else set()
    try:
        rc = int(h.main() or 0)
    except KeyboardInterrupt:
        h.cleanup()
        return 130
    new = sorted(set(resdir.glob("summary-*.json")) - before)
    if new:
        doc = json.loads(new[-1].read_text())
        print("\n### Targets (this run)\n")
        print("\n".join(verdicts(doc["summary"])))
        print(f"\nsummary: {new[-1]}")
        for key, why in doc.get("skipped", {}).items():
            print(f"**{key}:** {why}")
    subprocess.run(["ip", "netns", "list"], check=False)  # nothing of ours should be left
    return rc


if __name__ == "__main__":
    sys.exit(main())
