"""``--custom-driver`` for the shared anchor harness: wgrelay in *port mode*.

The harness calls ``<python> port_mode_driver.py --relay 127.0.0.1:PORT --
<udpgen> ARGS`` for every run. Port mode has no data header: each side of a
session sends WireGuard's bytes to its own relay port, which serves only the
source address it latched to (a WireGuard handshake from the registered IP
whose mac1 verifies under the other peer's key). So, per run, this driver:

1. registers two fresh keys on control sockets and opens a session A -> B,
   which tells each side its session port (``a_port``, ``b_port``);
2. binds the two sockets the generator will use (peer A's, peer B's) and
   latches the ports *from them*: an initiation (148 B, mac1 keyed by B) from
   A's socket to ``a_port``, a response (92 B, mac1 keyed by A) from B's socket
   to ``b_port``, repeated with fresh ephemerals until each socket got the
   other's handshake through the relay, then drained. The generator inherits
   these very sockets (``--tx-fd``/``--rx-fd``), so every packet it sends comes
   from the latched address;
3. runs ``udpgen --proto custom`` with WireGuard's transport type as the only
   header (``04 00 00 00``: a ``--size N`` payload is an N + 4 byte WireGuard
   message, as in ``shared_driver.py``), A sending to ``relay:a_port``, B
   receiving from ``relay:b_port`` and echoing back there (round trip);
4. closes the session (which also takes it out of the kernel).

Where the relay runs (``--state-dir``, ``$WGRELAY_BENCH_STATE_DIR``, default
``/tmp/wgrelay-port-bench``): the relay's key is read from ``relay.key`` there.
If ``ns.json`` is there too, the relay was started by ``port_mode_relay.py`` in
a namespace pair (the kernel offload cannot work on loopback, see there); the
driver then moves itself into the generator's namespace before opening any
socket, talks to the relay's address there, and checks the forwarding mode:
with ``kernel_offload`` on, the relay's nftables table must map both session
ports before the generator starts and its counters must carry the packets the
generator received; with it off, there must be no table. A failed check exits
non-zero, so the harness records the run as failed instead of a wrong figure.

    .venv/bin/python bench/anchor_port_mode.py        # the one-run comparison
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench_common import (
    ensure_wgrelay_importable,
    forwarded_packets,
    mapped_ports,
    offload_table,
    parse_driver_args,
)

if TYPE_CHECKING:
    from relay_pair import ControlPeer

DEFAULT_STATE_DIR = "/tmp/wgrelay-port-bench"  # noqa: S108  (a fixed path both sides know)
NS_FILE = "ns.json"
LATCH_TIMEOUT_S = 5.0
OFFLOAD_WAIT_S = 5.0
WG_TRANSPORT_HDR = "04000000"
CLONE_NEWNET = 0x40000000
KERNEL_SHARE = 0.9
"""The kernel's session counters must account for this share of what B received."""

Addr = tuple[str, int]


def log(msg: str) -> None:
    print(f"port_mode_driver: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- where the relay is


@dataclass(frozen=True)
class Topology:
    relay_host: str
    local_host: str
    gen_ns: str | None = None
    relay_ns: str | None = None
    kernel_offload: str | None = None
    """"on"/"off" as the relay was started in the namespace pair; None on loopback."""


def read_topology(state_dir: Path, relay: Addr) -> Topology:
    f = state_dir / NS_FILE
    if not f.exists():
        if not relay[0].startswith("127."):
            sys.exit(f"port_mode_driver: {relay[0]}: only 127.0.0.0/8 on loopback")
        return Topology(relay_host=relay[0], local_host="127.0.0.1")
    d = json.loads(f.read_text())
    return Topology(
        relay_host=str(d["relay_host"]),
        local_host=str(d["local_host"]),
        gen_ns=str(d["gen_ns"]),
        relay_ns=str(d["relay_ns"]),
        kernel_offload=str(d["kernel_offload"]),
    )


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------- latching


def drain(s: socket.socket) -> list[tuple[bytes, Addr]]:
    got: list[tuple[bytes, Addr]] = []
    while True:
        try:
            data, addr = s.recvfrom(65535)
        except BlockingIOError:
            return got
        got.append((data, addr))


def latch(
    wg_a: socket.socket,
    wg_b: socket.socket,
    a: ControlPeer,
    b: ControlPeer,
    relay_host: str,
) -> tuple[int, int]:
    """Latch both session ports to the generator's sockets: (a_port, b_port)."""
    from wgrelay.proto.wgmac import MESSAGE_INITIATION, MESSAGE_RESPONSE, mac1_key
    from wgrelay.sim.wgwire import encode_initiation, encode_response, tai64n

    a_port, b_port = a.link.session_port[b.public], b.link.session_port[a.public]
    a_got = b_got = False
    deadline = time.monotonic() + LATCH_TIMEOUT_S
    while not (a_got and b_got):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"session ports {a_port}/{b_port} did not latch within {LATCH_TIMEOUT_S} s"
                f" (A got the response: {a_got}, B got the initiation: {b_got})"
            )
        sender = int.from_bytes(os.urandom(4), "little")
        # fresh ephemerals each try: the relay ignores a mac1 it has seen (replay)
        init = encode_initiation(
            sender, os.urandom(32), a.public.raw, tai64n(time.time()), mac1_key(b.public.raw)
        )
        resp = encode_response(
            int.from_bytes(os.urandom(4), "little"), sender, os.urandom(32), mac1_key(a.public.raw)
        )
        if not a_got:
            wg_a.sendto(init, (relay_host, a_port))
            time.sleep(0.02)
        wg_b.sendto(resp, (relay_host, b_port))
        time.sleep(0.05)
        for data, addr in drain(wg_b):
            b_got |= addr == (relay_host, b_port) and data[:1] == bytes((MESSAGE_INITIATION,))
        for data, addr in drain(wg_a):
            a_got |= addr == (relay_host, a_port) and data[:1] == bytes((MESSAGE_RESPONSE,))
    return a_port, b_port


# ---------------------------------------------------------------- main


def udpgen_received(out: str) -> int:
    line = next((x for x in out.splitlines() if x.startswith("{")), None)
    if line is None:
        return 0
    r = json.loads(line)
    if r.get("mode") == "lat":
        return 2 * int(r.get("count", 0))  # A -> B and the echo back, per probe
    return int(r.get("recv", 0))


def main() -> int:
    ensure_wgrelay_importable(__file__, "port_mode_driver")
    from relay_pair import open_session
    from shared_driver import read_relay_public_key

    from wgrelay.keys import PublicKey

    args, cmd = parse_driver_args(
        "wgrelay port-mode driver for the shared harness",
        DEFAULT_STATE_DIR,
        "the relay's --state-dir (relay.key, and ns.json for the namespace pair)",
    )
    host, _, port = args.relay.rpartition(":")
    topo = read_topology(args.state_dir, (host, int(port)))
    relay_key = PublicKey.from_base64(read_relay_public_key(args.state_dir))
    if topo.gen_ns is not None:
        enter_netns(topo.gen_ns)  # before any socket: they all live in the generator's ns
    relay = (topo.relay_host, int(port))

    a, b = open_session(
        relay,
        relay_key,
        lambda a, b: b.public in a.link.session_port and a.public in b.link.session_port,
        "session with ports (is the relay's --port-range off?)",
        topo.local_host,
    )
    wg_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (wg_a, wg_b):
            s.bind((topo.local_host, 0))
            s.setblocking(False)
        a_port, b_port = latch(wg_a, wg_b, a, b, topo.relay_host)
        before = 0
        if topo.kernel_offload == "on":
            assert topo.relay_ns is not None
            deadline = time.monotonic() + OFFLOAD_WAIT_S
            while not {a_port, b_port} <= mapped_ports(table := offload_table(topo.relay_ns)):
                if time.monotonic() > deadline:
                    log(f"kernel offload claimed, but nftables maps {sorted(mapped_ports(table))}")
                    return 3
                time.sleep(0.05)
            before = forwarded_packets(table)
        elif (
            topo.kernel_offload == "off"
            and topo.relay_ns is not None
            and offload_table(topo.relay_ns) is not None
        ):
            log("userspace claimed, but the relay has an nftables offload table")
            return 3
        time.sleep(0.05)
        drain(wg_a)
        drain(wg_b)
        wg_a.setblocking(True)
        wg_b.setblocking(True)
        full = [
            *cmd,
            "--proto",
            "custom",
            "--dst",
            f"{topo.relay_host}:{a_port}",
            "--tx-fd",
            str(wg_a.fileno()),
            "--rx-fd",
            str(wg_b.fileno()),
            "--tx-hdr",
            WG_TRANSPORT_HDR,
            "--rx-hdr-len",
            "4",
            "--echo-hdr",
            WG_TRANSPORT_HDR,
            "--back-hdr-len",
            "4",
        ]
        res = subprocess.run(
            full, pass_fds=(wg_a.fileno(), wg_b.fileno()), stdout=subprocess.PIPE, check=False
        )
        out = res.stdout.decode()
        sys.stdout.write(out)
        sys.stdout.flush()
        if res.returncode != 0 or topo.kernel_offload != "on":
            return res.returncode
        assert topo.relay_ns is not None
        fwd = forwarded_packets(offload_table(topo.relay_ns)) - before
        want = udpgen_received(out)
        if fwd < KERNEL_SHARE * want:
            log(f"kernel offload claimed, but nftables forwarded {fwd} of {want} packets")
            return 3
        return 0
    finally:
        with contextlib.suppress(OSError):
            a.link.close_session(b.public, time.monotonic())
            a.flush()
        for s in (wg_a, wg_b, a.sock, b.sock):
            s.close()


if __name__ == "__main__":
    sys.exit(main())
