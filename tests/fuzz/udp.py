"""The fuzzer over real UDP: a relay process on 127.0.0.1, the world's keys.

The relay runs as ``wgrelay start-relay --open`` with the world's relay key
(world.py), so the corpus authenticates at it. Two honest peers (p0, p1: real
``RelayLink``s on their own sockets) register, open a session and keep it up
while corpus seeds, re-sealed at the real time and mutated (mutators.py), go
to the relay from 200 sockets spread over 127.0.0.0/8 (a source cannot be
forged here). Cookie replies are matched to the datagram that asked for them
by their echo, so later datagrams from that socket carry a valid cookie.

What is checked, since the relay's inside cannot be seen per datagram: the
process never dies and logs no traceback and no internal error (and its
metrics count none); everything it sends is a 26-byte cookie reply or a
well-formed control message of at most 1200 bytes; and afterwards the honest
session still forwards a frame byte for byte, and a fresh peer registers and
opens a session. This test reads the wall clock, as the relay it talks to does.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.fuzz import seeds as corpus_io
from tests.fuzz.generators import RelayInputs, wg_payload
from tests.fuzz.layout import ControlDraft, DataDraft, open_draft
from tests.fuzz.mutators import Mutator
from tests.fuzz.world import RELAY_SEED, World, party_named
from wgrelay.client.link import LinkConfig, LinkState, RelayLink
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, write_relay_key_file
from wgrelay.proto.constants import MAX_CONTROL_SIZE, MsgType
from wgrelay.proto.cookie import COOKIE_REPLY_LEN
from wgrelay.proto.data import data_header
from wgrelay.proto.envelope import FLAG_COOKIE, parse_control_header
from wgrelay.relay.admission import Addr

READY = re.compile(r"relay (\S+) listening on (\S+):(\d+)")
FUZZ_SOCKETS = 200


@dataclass
class RelayProcess:
    proc: subprocess.Popen[str]
    endpoint: tuple[str, int]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM by PID (SIGKILL after 10 s); the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def relay_process(state_dir: Path, *args: str) -> Iterator[RelayProcess]:
    """A relay with the world's key on 127.0.0.1 (copied from
    tests/integration/relays.py: this one needs the key file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key_file = state_dir / "relay.key"
    write_relay_key_file(key_file, RelayIdentity.from_seed(RELAY_SEED))
    log = state_dir / "relay.log"
    cmd = [sys.executable, "-m", "wgrelay", "start-relay", "--state-dir", str(state_dir)]
    cmd += ["--bind", "127.0.0.1", "--port", "0", "--key-file", str(key_file), *args]
    with log.open("w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = READY.search(line)
    if m is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"relay did not start: {line!r} {log.read_text()}")
    rp = RelayProcess(proc, (m.group(2), int(m.group(3))), log)
    try:
        yield rp
    finally:
        rp.stop()


class UdpPeer:
    """A RelayLink on its own socket, pumped by hand (real clock)."""

    def __init__(self, name: str, relay: tuple[str, int], ident: RelayIdentity) -> None:
        party = party_named(name, ident, ("127.0.0.1", 0))
        assert party.private is not None
        self.party = party
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.relay = relay
        self.link = RelayLink(
            PrivateKey(party.private), ident.public, LinkConfig(), time.monotonic(), time.time()
        )
        self.frames: list[bytes] = []

    def flush(self) -> None:
        for d in self.link.datagrams_to_send():
            self.sock.sendto(d, self.relay)

    def take(self, data: bytes) -> None:
        if data[:1] == bytes((MsgType.DATA,)):
            self.frames.append(data)
        else:
            self.link.receive(data, time.monotonic())

    def close(self) -> None:
        self.sock.close()


def pump(peers: list[UdpPeer], seconds: float) -> None:
    """Move the honest peers' traffic until ``seconds`` pass with nothing to read."""
    by_fd = {p.sock.fileno(): p for p in peers}
    deadline = time.monotonic() + seconds
    while True:
        for p in peers:
            p.link.handle_timer(time.monotonic())
            p.flush()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(list(by_fd), [], [], min(left, 0.05))
        for fd in ready:
            p = by_fd[fd]
            with contextlib.suppress(BlockingIOError):
                while True:
                    data, _ = p.sock.recvfrom(65535)
                    p.take(data)


def wait_for(peers: list[UdpPeer], done: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Pump until ``done()`` (False if ``seconds`` pass first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        pump(peers, 0.05)
    return done()


class UdpInputs(RelayInputs):
    """Mutators' context against a relay we only see from outside."""

    def __init__(self, world: World, rng: random.Random, peers: list[UdpPeer]) -> None:
        super().__init__(world, rng)
        self.peers = peers
        self.remote_cookies: dict[tuple[bytes, Addr], bytes] = {}

    def now_us(self) -> int:
        return int(time.time() * 1_000_000)

    def some_sid(self) -> bytes:
        sids = [sid for p in self.peers for sid in p.link.sessions]
        if sids and self.rng.random() < 0.6:
            return self.rng.choice(sids)
        return self.rng.randbytes(8)

    def cookie_for(self, sender: bytes) -> bytes | None:
        return self.remote_cookies.get((sender, self.src))

    def newest_ts(self, sender: bytes) -> int | None:
        return None


@dataclass
class UdpReport:
    sent: int = 0
    received: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    drops: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def scrape_drops(metrics: tuple[str, int]) -> dict[str, float]:
    url = f"http://{metrics[0]}:{metrics[1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    drops = {}
    for m in re.finditer(r'^wgrelay_drops_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M):
        drops[m.group(1)] = float(m.group(2))
    return drops


def fuzz_udp(inputs: int, seed: int, state_dir: Path) -> UdpReport:
    report = UdpReport()
    started = time.perf_counter()
    metrics = ("127.0.0.1", free_tcp_port())
    with relay_process(state_dir, "--open", "--metrics", f"{metrics[0]}:{metrics[1]}") as rp:
        ident = RelayIdentity.from_seed(RELAY_SEED)
        p0, p1 = UdpPeer("p0", rp.endpoint, ident), UdpPeer("p1", rp.endpoint, ident)
        honest = [p0, p1]
        fuzz: list[socket.socket] = []
        try:
            for i in range(FUZZ_SOCKETS):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((f"127.0.{i // 250}.{2 + i % 250}", 0))
                s.setblocking(False)
                fuzz.append(s)
            for p in honest:
                p.link.connect(time.monotonic())
            if not wait_for(
                honest, lambda: all(p.link.state == LinkState.REGISTERED for p in honest)
            ):
                report.problems.append("honest peers did not register")
                return report
            _fuzz_loop(inputs, seed, rp, honest, fuzz, report)
            report.problems += _after(rp, ident)
            report.drops = scrape_drops(metrics)
            if report.drops.get("internal_error"):
                report.problems.append(f"internal errors: {report.drops['internal_error']}")
        finally:
            for s in fuzz:
                s.close()
            for p in honest:
                p.close()
        if not rp.alive():
            report.problems.append(f"the relay exited with {rp.proc.returncode}")
    log = rp.log.read_text()
    for bad in ("Traceback", "internal error"):
        if bad in log:
            report.problems.append(f"{bad!r} in the relay's log:\n{log[-3000:]}")
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_loop(
    inputs: int,
    seed: int,
    rp: RelayProcess,
    honest: list[UdpPeer],
    fuzz: list[socket.socket],
    report: UdpReport,
) -> None:
    rng = random.Random(seed)
    world = World()  # the keys and the corpus's meaning; its relay is not used
    gen = UdpInputs(world, rng, honest)
    mut = Mutator(rng, gen)
    keys = {p.public: p.to_relay for p in world.parties if p.to_relay is not None}
    seeds = [s.data for s in corpus_io.load("relay")]
    echoes: dict[bytes, tuple[bytes, Addr]] = {}
    history: deque[bytes] = deque(maxlen=128)
    p0, p1 = honest
    p0.link.request_session(PublicKey(p1.party.public), time.monotonic())
    if not wait_for(honest, lambda: PublicKey(p1.party.public) in p0.link.session_of):
        report.problems.append("honest peers got no session before fuzzing")
    for i in range(inputs):
        sock = rng.choice(fuzz)
        gen.src = sock.getsockname()
        draft = open_draft(rng.choice(seeds), keys)
        if isinstance(draft, ControlDraft):
            draft.ts = gen.now_us() + rng.choice([0, 1, 1000])
            draft.nonce = rng.randbytes(24)
            cookie = gen.cookie_for(draft.sender)
            if cookie is not None and rng.random() < 0.8:
                draft.cookie, draft.flags = cookie, draft.flags | FLAG_COOKIE
        elif isinstance(draft, DataDraft) and rng.random() < 0.7:
            draft.sid = gen.some_sid()
        partner = history[rng.randrange(len(history))] if history else None
        data, _ = mut.mutate(draft, partner, rng.choice([0, 0, 1, 1, 2, 3]))
        if len(data) >= 43:
            echoes[data[35:43]] = (data[3:35], gen.src)
        sock.sendto(data, rp.endpoint)
        report.sent += 1
        history.append(data)
        if i % 256 == 255:
            _drain(fuzz, echoes, gen, report)
            pump(honest, 0.0)
            if not rp.alive():
                return
    _drain(fuzz, echoes, gen, report)


def _drain(
    fuzz: list[socket.socket],
    echoes: dict[bytes, tuple[bytes, Addr]],
    gen: UdpInputs,
    report: UdpReport,
) -> None:
    """Read what the relay sent the fuzzer's sockets; keep the cookies."""
    for s in fuzz:
        with contextlib.suppress(BlockingIOError):
            while True:
                data, _ = s.recvfrom(65535)
                if data[:1] == bytes((MsgType.COOKIE_REPLY,)):
                    report.received["cookie_reply"] += 1
                    if len(data) != COOKIE_REPLY_LEN:
                        report.problems.append(f"cookie reply of {len(data)} bytes")
                    asked = echoes.pop(data[2:10], None)
                    if asked is not None:
                        gen.remote_cookies[asked] = data[10:26]
                elif data[:1] == bytes((MsgType.DATA,)):
                    report.received["data"] += 1  # a session the fuzzer opened
                else:
                    try:
                        parse_control_header(data)
                    except RemoteProtocolError as e:
                        report.problems.append(f"malformed datagram from the relay: {e!r}")
                        continue
                    if len(data) > MAX_CONTROL_SIZE:
                        report.problems.append(f"control datagram of {len(data)} bytes")
                    report.received[MsgType(data[0]).name] += 1


def _after(rp: RelayProcess, ident: RelayIdentity) -> list[str]:
    """Two peers the relay has never seen register, open a session and pass
    frames both ways. (Not p0 and p1: the fuzzer spoke with their keys, and
    may legitimately have moved them, refused their sessions or pushed their
    newest timestamp ahead; see test_a_restarted_peer_whose_clock_was_ahead_can_move.)"""
    problems: list[str] = []
    a, b = (UdpPeer(n, rp.endpoint, ident) for n in ("fresh-udp-a", "fresh-udp-b"))
    peers = [a, b]
    try:
        for p in peers:
            p.link.connect(time.monotonic())
        if not wait_for(peers, lambda: all(p.link.state == LinkState.REGISTERED for p in peers)):
            return [f"after fuzzing, not registered: {[p.link.state.value for p in peers]}"]
        target = PublicKey(b.party.public)
        a.link.request_session(target, time.monotonic())
        if not wait_for(peers, lambda: target in a.link.session_of):
            return ["after fuzzing, fresh peers got no session"]
        sid = a.link.session_of[target]
        for src, dst in ((a, b), (b, a)):
            frame = data_header(sid) + wg_payload(random.Random(1), 64)
            src.sock.sendto(frame, rp.endpoint)
            if not wait_for(peers, partial(list.__contains__, dst.frames, frame), 5.0):
                problems.append(
                    f"after fuzzing, a frame {src.party.name}->{dst.party.name} was lost"
                )
    finally:
        for p in peers:
            p.close()
    return problems
