"""``--custom-cmd`` for the shared harness: wgrelay in a namespace pair, for kernel offload.

Why not on loopback: the offload is a stateless nftables rewrite in
*prerouting* (destination) and *postrouting* (source). A packet to
``127.0.0.1:a_port`` that prerouting rewrites to another local socket is
delivered locally (prerouting -> input), never forwarded, so it never passes
postrouting: B would get it with A's source address and port, not
``relay:b_port``, and B's echo would go straight to A. ``route_localnet`` does
not change that (it lets 127/8 be routed *between* interfaces; local delivery
stays local). So this launcher builds the smallest topology where the kernel
really forwards, while keeping every address in 127.0.0.0/8 (the harness's
generator refuses any other destination):

    ns wgrb-gen                                  ns wgrb-relay
    udpgen A, B, driver  127.0.100.1/24 ─ veth ─ 127.0.100.2/24  wgrelay start-relay
                                                                 (ip_forward=1 here)

Both namespaces have ``route_localnet=1``, ``rp_filter=0`` and the catch-all
``local 127.0.0.0/8 dev lo`` route removed (127.0.0.1 itself stays local), so
127.0.100.0/24 is an ordinary on-link subnet between them. The relay namespace
also has ``send_redirects=0`` (forwarding A -> B goes back out the interface
it came in on; the kernel would otherwise send a few ICMP redirects).

The harness waits until ``{port}`` is bound in *its* namespace; the relay's
port is in wgrb-relay, so once the relay is ready this launcher binds a
placeholder UDP socket on ``127.0.0.1:{port}`` (it never reads it) and writes
``ns.json`` into the state dir for ``port_mode_driver.py``. SIGTERM (what the
harness sends) stops the relay by its PID, deletes both namespaces (the veth
and the relay's nftables table go with them) and ``ns.json``. Namespaces left by
a launcher that was SIGKILLed are deleted at the next start.

    port_mode_relay.py --port 40100 --kernel-offload on --state-dir /tmp/wgrelay-port-bench-k
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from bench_common import wait_for_line

BENCH = Path(__file__).resolve().parent
VENV_BIN = BENCH.parent / ".venv" / "bin"
GEN_NS, RELAY_NS = "wgrb-gen", "wgrb-relay"
GEN_IF, RELAY_IF = "wgrb-g0", "wgrb-r0"
GEN_IP, RELAY_IP = "127.0.100.1", "127.0.100.2"
PREFIX = 24
READY = re.compile(r"relay (\S+) listening on (\S+)")
READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1


def log(msg: str) -> None:
    print(f"port_mode_relay: {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def delete_namespaces() -> None:
    """Our two namespaces, and anything still running in them (our own, from a run
    that was SIGKILLed), by PID."""
    for ns in (GEN_NS, RELAY_NS):
        if not netns_exists(ns):
            continue
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


def sysctl(ns: str, key: str, value: str) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def build_namespaces(forwarding: bool, rps_cpus: str | None) -> None:
    sh("ip", "netns", "add", GEN_NS)
    sh("ip", "netns", "add", RELAY_NS)
    sh("ip", "link", "add", GEN_IF, "netns", GEN_NS, "type", "veth", "peer", RELAY_IF, "netns",
       RELAY_NS)  # fmt: skip
    for ns, dev, ip in ((GEN_NS, GEN_IF, GEN_IP), (RELAY_NS, RELAY_IF, RELAY_IP)):
        for conf in ("all", "default"):
            sysctl(ns, f"net.ipv4.conf.{conf}.route_localnet", "1")
            sysctl(ns, f"net.ipv4.conf.{conf}.rp_filter", "0")
        sysctl(ns, f"net.ipv4.conf.{dev}.route_localnet", "1")
        sysctl(ns, f"net.ipv4.conf.{dev}.rp_filter", "0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        # 127.0.100.0/24 must be on the veth, not swallowed by lo's catch-all
        sh("ip", "-n", ns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
    sysctl(RELAY_NS, "net.ipv4.conf.all.send_redirects", "0")
    sysctl(RELAY_NS, f"net.ipv4.conf.{RELAY_IF}.send_redirects", "0")
    sysctl(RELAY_NS, "net.ipv4.ip_forward", "1" if forwarding else "0")
    if rps_cpus is not None:
        # what arrives from the generator is processed (forwarded) on these CPUs
        queue = f"/sys/class/net/{RELAY_IF}/queues/rx-0/rps_cpus"
        sh("ip", "netns", "exec", RELAY_NS, "sh", "-c", f"echo {int(rps_cpus, 16):x} > {queue}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM if this launcher dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_relay(
    port: int, offload: str, state_dir: Path, extra: list[str]
) -> subprocess.Popen[bytes]:
    cmd = ["ip", "netns", "exec", RELAY_NS, str(VENV_BIN / "wgrelay"), "start-relay", "--open",
           "--bind", RELAY_IP, "--port", str(port), "--max-bandwidth", "0",
           "--kernel-offload", offload, "--state-dir", str(state_dir), *extra]  # fmt: skip
    log_file = (state_dir / "relay.log").open("wb")
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        preexec_fn=_die_with_parent,  # single-threaded here: safe
    )
    log_file.close()
    try:
        wait_for_line(p, READY, READY_TIMEOUT_S)
    except RuntimeError as e:
        stop(p)
        tail = (state_dir / "relay.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"relay did not start: {e}\n{tail}") from None
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=3)
    if p.stdout is not None:
        p.stdout.close()


class Stop(Exception):
    pass


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, required=True, help="the relay's main UDP port")
    ap.add_argument("--kernel-offload", choices=("on", "off"), default="on")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument(
        "--rps-cpus",
        metavar="HEXMASK",
        help="steer the relay veth's receive processing to these CPUs (RPS), e.g. 2 = CPU 1",
    )
    ap.add_argument("relay_args", nargs="*", help="more start-relay arguments (after --)")
    o = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("port_mode_relay: needs root (network namespaces)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ns_file = o.state_dir / "ns.json"
    relay: subprocess.Popen[bytes] | None = None
    placeholder: socket.socket | None = None
    try:
        delete_namespaces()  # a SIGKILLed earlier run
        o.state_dir.mkdir(parents=True, exist_ok=True)
        ns_file.unlink(missing_ok=True)
        build_namespaces(o.kernel_offload == "on", o.rps_cpus)
        relay = start_relay(o.port, o.kernel_offload, o.state_dir, o.relay_args)
        ns_file.write_text(
            json.dumps(
                {
                    "gen_ns": GEN_NS,
                    "relay_ns": RELAY_NS,
                    "relay_host": RELAY_IP,
                    "local_host": GEN_IP,
                    "kernel_offload": o.kernel_offload,
                    "relay_pid": relay.pid,
                    "rps_cpus": o.rps_cpus,
                }
            )
        )
        # what the harness waits for: its port, bound in its own namespace
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        placeholder.bind(("127.0.0.1", o.port))
        where = f"{RELAY_NS} at {RELAY_IP}:{o.port}"
        log(f"relay pid {relay.pid} in {where}, offload {o.kernel_offload}")
        while relay.poll() is None:
            time.sleep(0.2)
        log(f"relay exited with {relay.returncode}")
        return 1
    except Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up
        if placeholder is not None:
            placeholder.close()
        if relay is not None:
            stop(relay)
        ns_file.unlink(missing_ok=True)
        delete_namespaces()


if __name__ == "__main__":
    sys.exit(main())
