"""The kernel offload of port-mode sessions, on real packets in namespaces.

Three hosts on the testbed's internet bridge (one NIC each, so the relay
forwards out of the interface it received on, as a cloud VM does)::

    a 203.0.113.10 / 2001:db8:77::10 ──┐
    relay 203.0.113.11 / ::11 ─────────┼── br0 (namespace inet)
    b 203.0.113.12 / ::12 ─────────────┘

The relay namespace gets forwarding on and strict rp_filter (the test owns it).
``KernelOffload`` runs there in a driver process that takes JSON commands on
stdin, since libnftables works in its caller's namespace. Userspace listeners
on the relay's session ports stand for the relay's sockets: what the offload
must not forward lands there, which is the positive signal the negative checks
wait for.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.netns import BackgroundProcess, Namespace
from wgrelay.testbed.topology import Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

A_PORT, B_PORT = 40001, 40002  # the relay's session ports
A_WG_PORT, B_WG_PORT = 51820, 51821  # the peers' (latched) ports
OTHER_PORT = 51999
V6 = {"a": "2001:db8:77::10", "relay": "2001:db8:77::11", "b": "2001:db8:77::12"}
A_SECOND = {4: "203.0.113.250", 6: "2001:db8:77::250"}
IP_UDP_HEADERS = {4: 28, 6: 48}
TABLE = "wgrelay"
REPLY_TIMEOUT_S = 10.0
SEEN_TIMEOUT_S = 5.0

DRIVER = """
import dataclasses, json, sys
from wgrelay.relay.nft import NftError
from wgrelay.relay.offload import KernelOffload, OffloadPath, OffloadUnavailable
off = None
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    try:
        result = None
        if op == "open":
            off = KernelOffload.open()
            result = off.describe()
        elif op == "install":
            p = req["path"]
            off.install(OffloadPath(p["path_id"], p["family"], p["a_port"], tuple(p["a_addr"]),
                                    p["b_port"], tuple(p["b_addr"]), p["max_bytes_per_s"]))
        elif op == "remove":
            off.remove(req["path_id"])
        elif op == "counters":
            result = {k: dataclasses.asdict(v) for k, v in off.counters().items()}
        elif op == "paths":
            result = sorted(off.paths())
        elif op == "close":
            off.close()
        reply = {"ok": result}
    except (OffloadUnavailable, NftError, ValueError) as e:
        reply = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(reply), flush=True)
"""

# Peer tools. Every mode prints JSON lines; "ready" once its sockets are bound.
PEER = r"""
import json, selectors, socket, struct, sys, time

def fam(ip): return socket.AF_INET6 if ":" in ip else socket.AF_INET

def udp_socket(ip, port):
    s = socket.socket(fam(ip), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((ip, port))
    return s

def csum(data):
    if len(data) % 2: data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return total

def pseudo(src, dst, length):
    f = fam(src)
    s, d = socket.inet_pton(f, src), socket.inet_pton(f, dst)
    if f == socket.AF_INET: return s + d + struct.pack("!BBH", 0, 17, length)
    return s + d + struct.pack("!IxxxB", length, 17)

def out(**kw): print(json.dumps(kw), flush=True)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "listen":  # listen IP [reply 0/1] PORT...: log every datagram, maybe answer
    ip, reply, ports = args[0], args[1] == "1", [int(p) for p in args[2:]]
    sel = selectors.DefaultSelector()
    for port in ports: sel.register(udp_socket(ip, port), selectors.EVENT_READ)
    out(ready=True)
    while True:
        for key, _ in sel.select():
            data, addr = key.fileobj.recvfrom(65535)
            out(port=key.fileobj.getsockname()[1], src=list(addr[:2]), data=data.hex())
            if reply: key.fileobj.sendto(b"re:" + data, addr)
elif mode == "exchange":  # exchange IP PORT DST DPORT TIMEOUT PAYLOAD...: send, await replies
    ip, port, dst, dport, timeout = args[0], int(args[1]), args[2], int(args[3]), float(args[4])
    s = udp_socket(ip, port)
    for payload in args[5:]: s.sendto(bytes.fromhex(payload), (dst, dport))
    s.settimeout(timeout)
    for _ in args[5:]:
        data, addr = s.recvfrom(65535)
        out(src=list(addr[:2]), data=data.hex())
elif mode == "send":  # send IP PORT DST DPORT PAYLOAD: one datagram, nothing awaited
    s = udp_socket(args[0], int(args[1]))
    s.sendto(bytes.fromhex(args[4]), (args[2], int(args[3])))
elif mode == "rawsend":  # rawsend IP PORT DST DPORT PAYLOAD: UDP with our own full checksum
    ip, port, dst, dport = args[0], int(args[1]), args[2], int(args[3])
    payload = bytes.fromhex(args[4])
    header = struct.pack("!HHHH", port, dport, 8 + len(payload), 0)
    check = 0xFFFF - csum(pseudo(ip, dst, 8 + len(payload)) + header + payload) or 0xFFFF
    s = socket.socket(fam(ip), socket.SOCK_RAW, socket.IPPROTO_UDP)
    s.bind((ip, 0))
    s.sendto(header[:6] + struct.pack("!H", check) + payload, (dst, 0))
elif mode == "rawcap":  # rawcap IP PORT: the first UDP packet to PORT, checksum verified
    ip, port = args[0], int(args[1])
    raw = socket.socket(fam(ip), socket.SOCK_RAW, socket.IPPROTO_UDP)
    sock = udp_socket(ip, port)
    sock.settimeout(5.0)
    out(ready=True)
    while True:
        packet, addr = raw.recvfrom(65535)
        if fam(ip) == socket.AF_INET: packet = packet[(packet[0] & 0x0F) * 4:]
        sport, dport, length, check = struct.unpack("!HHHH", packet[:8])
        if dport == port: break
    ok = check != 0 and csum(pseudo(addr[0], ip, length) + packet[:length]) == 0xFFFF
    data, src = sock.recvfrom(65535)  # the socket gets it only if the kernel agrees
    out(src=[addr[0], sport], checksum_ok=ok, data=packet[8:length].hex(),
        socket_src=list(src[:2]), socket_data=data.hex())
elif mode == "flood":  # flood IP PORT DST DPORT BYTES_PER_S SECONDS SIZE: paced sender
    ip, port, dst, dport = args[0], int(args[1]), args[2], int(args[3])
    rate, seconds, size = float(args[4]), float(args[5]), int(args[6])
    s = udp_socket(ip, port)
    payload, sent, start = b"x" * size, 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        if sent < rate * elapsed:
            s.sendto(payload, (dst, dport)); sent += size
        else:
            time.sleep(0.0005)
    out(sent=sent)
elif mode == "sink":  # sink IP PORT IDLE_S: arrival times and sizes until IDLE_S of silence
    s = udp_socket(args[0], int(args[1]))
    out(ready=True)
    first, arrivals = None, []
    while True:
        if first is not None: s.settimeout(float(args[2]))
        try: data = s.recv(65535)
        except TimeoutError: break
        now = time.monotonic()
        if first is None: first = now
        arrivals.append([now - first, len(data)])
    out(arrivals=arrivals)
"""


class Driver:
    """``KernelOffload`` in a process inside the relay namespace, one command a line."""

    def __init__(self, relay: Relay, log_dir: str) -> None:
        self.log_path = os.path.join(log_dir, f"driver-{time.monotonic_ns()}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                relay.ns.exec_argv([sys.executable, "-c", DRIVER]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._buffer = b""

    def call(self, op: str, timeout: float = 10.0, **kw: Any) -> Any:
        """Send one command and return its result; raise ``DriverError`` for an error."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"driver gave no answer to {op} in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                with open(self.log_path) as f:
                    raise RuntimeError(f"driver exited during {op}: {f.read()[-2000:]}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(reply["error"], reply["message"])
        return reply["ok"]

    def counters(self) -> dict[int, dict[str, int]]:
        return {int(k): v for k, v in self.call("counters").items()}

    def kill(self) -> None:
        """SIGKILL, by PID: no close(), no goodbye."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(DriverError, TimeoutError, RuntimeError, OSError):
                self.call("close", timeout=5.0)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class DriverError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class Net:
    tb: Testbed
    a: Relay
    relay: Relay
    b: Relay
    drivers: list[Driver]

    def ip(self, node: str, family: int) -> str:
        host = getattr(self, node)
        return str(host.address) if family == 4 else V6[node]

    def driver(self) -> Driver:
        d = Driver(self.relay, str(self.tb.work_dir))
        self.drivers.append(d)
        return d

    def path(self, family: int, path_id: int = 7, limit: int = 0) -> dict[str, Any]:
        return {
            "path_id": path_id,
            "family": family,
            "a_port": A_PORT,
            "a_addr": [self.ip("a", family), A_WG_PORT],
            "b_port": B_PORT,
            "b_addr": [self.ip("b", family), B_WG_PORT],
            "max_bytes_per_s": limit,
        }

    def peer(self, node: str, *args: object, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Run a peer tool to completion in ``node``; its JSON lines."""
        ns: Namespace = getattr(self, node).ns
        argv = [sys.executable, "-c", PEER, *map(str, args)]
        out = ns.run(argv, timeout=timeout).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def start(self, node: str, name: str, *args: object) -> BackgroundProcess:
        """Start a peer tool in the background and wait until its sockets are bound."""
        ns: Namespace = getattr(self, node).ns
        proc = ns.popen([sys.executable, "-c", PEER, *map(str, args)], name=name)
        assert proc.wait_for_log('"ready"', timeout=SEEN_TIMEOUT_S), proc.read_log()
        return proc


def _lines(proc: BackgroundProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proc.read_log().splitlines() if line.startswith("{")]
    return [line for line in lines if "ready" not in line]


def _nft_table(relay: Relay) -> list[dict[str, Any]] | None:
    """The relay namespace's wgrelay table as JSON objects; None when absent."""
    out = relay.ns.run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    if out.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(out.stdout)["nftables"]
    return items


@pytest.fixture
def net() -> Iterator[Net]:
    with Testbed() as tb:
        a, relay, b = tb.add_relay("a"), tb.add_relay("relay"), tb.add_relay("b")
        for name, host in (("a", a), ("relay", relay), ("b", b)):
            host.ns.ip("address", "add", f"{V6[name]}/64", "dev", "eth0", "nodad")
        for family in (4, 6):
            plen = "24" if family == 4 else "64"
            a.ns.ip("address", "add", f"{A_SECOND[family]}/{plen}", "dev", "eth0", "nodad")
        relay.ns.sysctl("net.ipv4.ip_forward", "1")
        relay.ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        relay.ns.sysctl("net.ipv4.conf.all.rp_filter", "1")  # strict: must not matter
        relay.ns.sysctl("net.ipv4.conf.eth0.rp_filter", "1")
        state = Net(tb, a, relay, b, [])
        try:
            yield state
        finally:
            for d in state.drivers:
                d.stop()
            relay.ns.run(["nft", "delete", "table", "inet", TABLE], check=False)
            # (the namespaces, with anything left in them, go with the testbed)


CT_WATCH = """
table inet ctwatch {
    chain fwdchain {
        type filter hook forward priority 0; policy accept;
        ct state untracked counter
    }
}
"""


def _hex(text: str) -> str:
    return text.encode().hex()


# ---------------------------------------------------------------- forwarding


@pytest.mark.parametrize("family", [4, 6])
def test_session_forwarded_both_ways_counted_and_removed(net: Net, family: int) -> None:
    relay_ip, a_ip, b_ip = net.ip("relay", family), net.ip("a", family), net.ip("b", family)
    # A forward chain that wakes conntrack up and counts what it sees untracked.
    net.relay.ns.nft(CT_WATCH)
    drv = net.driver()
    assert "ip_forward=1 (on)" in drv.call("open")
    drv.call("install", path=net.path(family))
    assert drv.call("paths") == [7]
    b_echo = net.start("b", "echo", "listen", b_ip, 1, B_WG_PORT)
    userspace = net.start("relay", "sockets", "listen", "::" if family == 6 else "0.0.0.0", 0,
                          A_PORT, B_PORT)  # fmt: skip

    payloads = [f"hello {i}".encode() for i in range(3)]
    replies = net.peer("a", "exchange", a_ip, A_WG_PORT, relay_ip, A_PORT, REPLY_TIMEOUT_S,
                       *(p.hex() for p in payloads))  # fmt: skip

    # A hears B's answers from relay:a_port, B heard A from relay:b_port.
    assert replies == [{"src": [relay_ip, A_PORT], "data": (b"re:" + p).hex()} for p in payloads]
    seen_by_b = _lines(b_echo)
    assert seen_by_b == [
        {"port": B_WG_PORT, "src": [relay_ip, B_PORT], "data": p.hex()} for p in payloads
    ]
    assert _lines(userspace) == []  # the relay's sockets saw none of it
    headers = IP_UDP_HEADERS[family]
    expected = {
        "ab_packets": 3,
        "ab_bytes": sum(len(p) + headers for p in payloads),
        "ba_packets": 3,
        "ba_bytes": sum(len(p) + 3 + headers for p in payloads),
        "dropped_packets": 0,
        "unrouted_packets": 0,
    }
    assert drv.counters() == {7: expected}
    # Stateless: conntrack saw the session's packets as untracked and kept no entry.
    watch = net.relay.ns.run(["nft", "list", "chain", "inet", "ctwatch", "fwdchain"]).stdout
    assert "ct state untracked counter packets 6 " in watch
    entries = net.relay.ns.run(["conntrack", "-L", "-p", "udp"], check=False)
    assert f"dport={A_PORT}" not in entries.stdout
    assert f"dport={B_PORT}" not in entries.stdout

    # Another port of A, another address of A: not the session, so not forwarded;
    # they reach the relay's socket on a_port (which is what we wait for).
    net.peer("a", "send", a_ip, OTHER_PORT, relay_ip, A_PORT, _hex("stray port"))
    net.peer("a", "send", A_SECOND[family], A_WG_PORT, relay_ip, A_PORT, _hex("stray addr"))
    assert wait_until(lambda: len(_lines(userspace)) == 2, SEEN_TIMEOUT_S), userspace.read_log()
    assert {(tuple(x["src"]), x["port"]) for x in _lines(userspace)} == {
        ((a_ip, OTHER_PORT), A_PORT),
        ((A_SECOND[family], A_WG_PORT), A_PORT),
    }
    assert len(_lines(b_echo)) == 3
    assert drv.counters() == {7: expected}

    # Removed: A's session packets go to userspace again.
    drv.call("remove", path_id=7)
    drv.call("remove", path_id=7)  # absent: no error
    assert drv.call("paths") == []
    net.peer("a", "send", a_ip, A_WG_PORT, relay_ip, A_PORT, _hex("after remove"))
    assert wait_until(lambda: len(_lines(userspace)) == 3, SEEN_TIMEOUT_S), userspace.read_log()
    assert _lines(userspace)[-1]["src"] == [a_ip, A_WG_PORT]
    assert len(_lines(b_echo)) == 3
    assert drv.counters() == {}
    table = _nft_table(net.relay)
    assert table is not None
    assert not [x for x in table if "chain" in x and x["chain"]["name"].startswith("p7_")]


@pytest.mark.parametrize("family", [4, 6])
def test_rewritten_checksum_is_valid(net: Net, family: int) -> None:
    """A datagram with a software checksum (no offload to hide behind) arrives intact."""
    relay_ip, a_ip, b_ip = net.ip("relay", family), net.ip("a", family), net.ip("b", family)
    drv = net.driver()
    drv.call("open")
    drv.call("install", path=net.path(family))
    cap = net.start("b", "rawcap", "rawcap", b_ip, B_WG_PORT)

    payload = _hex("checksummed by hand, rewritten by the kernel")
    net.peer("a", "rawsend", a_ip, A_WG_PORT, relay_ip, A_PORT, payload)

    assert wait_until(lambda: bool(_lines(cap)), SEEN_TIMEOUT_S), cap.read_log()
    assert _lines(cap) == [
        {
            "src": [relay_ip, B_PORT],
            "checksum_ok": True,
            "data": payload,
            "socket_src": [relay_ip, B_PORT],
            "socket_data": payload,
        }
    ]


def test_bandwidth_limit_holds(net: Net) -> None:
    """3x the limit offered for 3 s: the steady state gets the limit, within 10 %."""
    limit, size, seconds = 1_000_000, 1000, 3.0
    relay_ip, a_ip, b_ip = net.ip("relay", 4), net.ip("a", 4), net.ip("b", 4)
    drv = net.driver()
    drv.call("open")
    drv.call("install", path=net.path(4, limit=limit))
    sink = net.start("b", "sink", "sink", b_ip, B_WG_PORT, 0.5)

    net.peer("a", "flood", a_ip, A_WG_PORT, relay_ip, A_PORT, 3 * limit, seconds, size)

    assert wait_until(lambda: not sink.running(), 10.0), sink.read_log()
    arrivals: list[list[float]] = _lines(sink)[0]["arrivals"]
    wire = size + IP_UDP_HEADERS[4]  # the limit counts IP packets
    # The kernel's byte bucket starts full with one second of the rate (+ burst):
    # skip the first second, when that bucket is being drained.
    steady = [t for t, _ in arrivals if t >= 1.0]
    rate = len(steady) * wire / (steady[-1] - steady[0])
    counters = drv.counters()[7]
    print(f"limit {limit} B/s: steady state {rate:.0f} B/s ({rate / limit - 1:+.1%}), "
          f"{len(arrivals)} forwarded, {counters['dropped_packets']} dropped")  # fmt: skip
    assert abs(rate / limit - 1) < 0.10
    assert counters["ab_packets"] == len(arrivals)
    assert counters["dropped_packets"] > len(arrivals)  # 2/3 of what was offered


# ---------------------------------------------------------------- lifecycle


def test_open_after_kill_starts_from_an_empty_table(net: Net) -> None:
    relay_ip, a_ip, b_ip = net.ip("relay", 4), net.ip("a", 4), net.ip("b", 4)
    first = net.driver()
    first.call("open")
    first.call("install", path=net.path(4, path_id=5))
    first.kill()
    table = _nft_table(net.relay)
    assert table is not None
    assert [x for x in table if "chain" in x and x["chain"]["name"] == "p5_ab_in"]

    second = net.driver()
    second.call("open")
    table = _nft_table(net.relay)
    assert table is not None
    chains = {x["chain"]["name"] for x in table if "chain" in x}
    assert chains == {"prerouting", "postrouting"}
    assert not [x for x in table if "map" in x and x["map"].get("elem")]
    assert second.call("paths") == []
    # and the old session's packets reach userspace again
    userspace = net.start("relay", "sockets", "listen", "0.0.0.0", 0, A_PORT)
    b_echo = net.start("b", "echo", "listen", b_ip, 1, B_WG_PORT)
    net.peer("a", "send", a_ip, A_WG_PORT, relay_ip, A_PORT, _hex("old session"))
    assert wait_until(lambda: len(_lines(userspace)) == 1, SEEN_TIMEOUT_S), userspace.read_log()
    assert _lines(b_echo) == []

    second.call("close")
    assert _nft_table(net.relay) is None


def test_open_refuses_without_forwarding_and_leaves_it_off(net: Net) -> None:
    net.relay.ns.sysctl("net.ipv4.ip_forward", "0")
    drv = net.driver()
    with pytest.raises(DriverError) as refused:
        drv.call("open")
    assert refused.value.kind == "OffloadUnavailable"
    assert "net.ipv4.ip_forward=1" in refused.value.message
    assert "sysctl -w net.ipv4.ip_forward=1" in refused.value.message
    assert "\n" not in refused.value.message
    out = net.relay.ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout
    assert out.strip() == "0"
    assert _nft_table(net.relay) is None


def test_mixed_families_refused(net: Net) -> None:
    drv = net.driver()
    drv.call("open")
    path = net.path(4)
    path["b_addr"] = [V6["b"], B_WG_PORT]
    with pytest.raises(DriverError) as refused:
        drv.call("install", path=path)
    assert refused.value.kind == "ValueError"
    assert "mixes families" in refused.value.message
    assert drv.call("paths") == []


def test_forward_drop_elsewhere_is_warned_about_and_counted(net: Net) -> None:
    """A firewall dropping forwarded packets defeats the offload: say so, count it."""
    net.relay.ns.nft(
        "table ip fw { chain fwdchain { type filter hook forward priority 0; policy drop; }\n}\n"
    )
    drv = net.driver()
    described = drv.call("open")
    assert "warning: forward chain(s) with policy drop (ip fw fwdchain)" in described
    drv.call("install", path=net.path(4))
    relay_ip, a_ip = net.ip("relay", 4), net.ip("a", 4)
    net.peer("a", "send", a_ip, A_WG_PORT, relay_ip, A_PORT, _hex("into the firewall"))
    assert wait_until(lambda: drv.counters()[7]["unrouted_packets"] == 1, SEEN_TIMEOUT_S)
    assert drv.counters()[7]["ab_packets"] == 0
