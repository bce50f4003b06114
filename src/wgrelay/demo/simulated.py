"""``wgrelay demo --simulated``: the fallback story, told by the simulator, without root.

Two WireGuard peers, alice and bob, each behind a symmetric NAT, and two
relays on a simulated internet (``wgrelay.sim``). The agents are the
production ones (``wgrelay up``'s ``Agent``), the relays are production
``RelayCore``/``RelayServer``; only WireGuard and the network are simulated.
The story, as it happens:

1. the agents bring the tunnel up through a relay at once (relay first; two
   symmetric NATs let no direct path through, and the agents learn from the
   relay that both map per destination, so they try only the configured
   endpoints, now and then);
2. a ping crosses the relayed tunnel;
3. the relay carrying it is powered off, and the agents fail over to the other;
4. bob's NAT box is reconfigured as a full cone (it keeps WireGuard's port and
   lets anyone in once bob has sent out): the relay sees bob's WireGuard from
   a new mapping, learns that it maps the same way for every destination,
   tells both agents, and their coordinated try goes direct.

Every line carries the virtual time it happened at. Virtual time runs as fast
as the machine allows (``speed`` 0) or ``speed`` times faster than real time,
so a person can follow it.

``wgrelay demo --simulated --matrix`` prints the NAT-pair grid instead
(``docs/NAT_MATRIX.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from wgrelay.mesh.agent import PathKind
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import PathChange, SimMesh, SimPeer, SimRelay
from wgrelay.sim.natmatrix import compute, render_markdown

SEED = 7
STEP_S = 0.05
"""Virtual seconds run between two looks at the wall clock (pacing)."""
PING_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 60.0
FAILOVER_TIMEOUT_S = 60.0
BACK_TO_DIRECT_TIMEOUT_S = 600.0
SETTLE_S = 20.0
"""How long the story lets a path run before the next twist."""


@dataclass(slots=True)
class _PingState:
    answered: int = 0
    lost: int = 0
    down_since: float | None = None
    last_rtt: float | None = None


class _Story:
    sim: Simulation
    mesh: SimMesh

    def __init__(self, out: TextIO, speed: float) -> None:
        self.out = out
        self.speed = speed
        self.wall_start = time.monotonic()
        self.names: dict[str, str] = {}
        self.ping = _PingState()
        self.outages: list[tuple[float, float]] = []

    # ------------------------------------------------------------ output

    def say(self, text: str, *, rename: bool = True) -> None:
        """One line at the current virtual time; short keys become names."""
        if rename:
            for short, name in self.names.items():
                text = text.replace(f"relay {short}", name).replace(short, name)
        print(f"[{self.sim.now():8.2f} s] {text}", file=self.out, flush=True)

    def note(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------ running

    def run_until(self, condition: Callable[[], bool], timeout_s: float) -> float:
        """Run (paced) until ``condition()``; the virtual time it held."""
        deadline = self.sim.now() + timeout_s
        while not condition():
            if self.sim.now() >= deadline:
                raise TimeoutError
            self.run_for(STEP_S)
        return self.sim.now()

    def run_for(self, seconds: float) -> None:
        end = self.sim.now() + seconds
        while self.sim.now() < end - 1e-9:
            self.sim.run_for(min(STEP_S, end - self.sim.now()))
            if self.speed > 0:
                ahead = self.sim.now() / self.speed - (time.monotonic() - self.wall_start)
                if ahead > 0:
                    time.sleep(ahead)

    # ------------------------------------------------------------ watching

    def on_change(self, c: PathChange) -> None:
        peer = self.mesh.peers[c.peer]
        other = self.mesh.peers[c.other]
        p = peer.agent.core.peers.get(other.public) if peer.agent is not None else None
        why = f" ({p.reason})" if p is not None else ""
        new = c.new.value if c.new is not None else "unknown"
        self.say(f"{c.peer}'s agent: {c.other} is {new}{why}")

    async def pinger(self, a: SimPeer, b: SimPeer) -> None:
        ps = self.ping
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            sent = self.sim.now()
            rtt = await a.ping(b, timeout_s=PING_INTERVAL_S)
            if rtt is None:
                ps.lost += 1
                if ps.down_since is None:
                    ps.down_since = sent
                    self.say(f"ping {a.name} -> {b.name}: no answer")
                return
            ps.answered += 1
            if ps.down_since is not None:
                self.outages.append((ps.down_since, sent))
                self.say(
                    f"ping {a.name} -> {b.name}: answered again, {rtt * 1000:.0f} ms "
                    f"({self.via(a, b)}); pings were lost for {sent - ps.down_since:.1f} s"
                )
                ps.down_since = None
            elif ps.last_rtt is None or abs(rtt - ps.last_rtt) > 0.005:
                self.say(f"ping {a.name} -> {b.name}: {rtt * 1000:.0f} ms ({self.via(a, b)})")
            ps.last_rtt = rtt

        while True:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(PING_INTERVAL_S)

    def via(self, a: SimPeer, b: SimPeer) -> str:
        kind = a.path(b)
        if kind is PathKind.RELAYED:
            relay = self.mesh.relay_by_key(a.relay_for(b))
            return f"relayed via {relay.name if relay else '?'}"
        return kind.value if kind is not None else "no path"


@contextlib.contextmanager
def _virtual_time_logging(story: _Story, verbose: int) -> Iterator[None]:
    """Production log lines with virtual timestamps: warnings by default, all with -v."""
    logger = logging.getLogger("wgrelay")
    saved = (logger.level, logger.propagate, list(logger.handlers))

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            story.say(f"  log {record.name.removeprefix('wgrelay.')}: {record.getMessage()}")

    logger.handlers = [Handler()]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


def _tell(story: _Story, relays: list[SimRelay], alice: SimPeer, bob: SimPeer) -> None:
    sim, mesh = story.sim, story.mesh
    note = story.note
    note("wgrelay demo (simulated): the fallback story on a simulated internet, no root needed")
    note("  production agents (wgrelay up) and relays; WireGuard and the network are simulated")
    note()
    for r in relays:
        delay_ms = r.host.link.delay_s * 1000
        story.say(
            f"{r.name} (key {r.key.short()}) listening at {r.endpoint[0]}:{r.endpoint[1]},"
            f" {delay_ms:.0f} ms from the internet",
            rename=False,
        )
    for p in (alice, bob):
        nat = p.host.nat
        where = f"behind a symmetric NAT at {nat.public_ip}" if nat else "on the internet"
        story.say(f"{p.name} (WireGuard key {p.public.short()}) {where}", rename=False)
    story.say("each WireGuard points at the other's public address and port; a symmetric NAT")
    story.say("never keeps that port, so the direct handshake cannot get through")
    story.say("the agents (wgrelay up) start, each with both relays as bootstrap relays")
    mesh.on_change([(alice, bob), (bob, alice)], story.on_change)
    mesh.start()
    t = story.run_until(lambda: mesh.connected(alice, bob), CONNECT_TIMEOUT_S)
    kind = alice.path(bob)
    story.say(f"tunnel up: both WireGuards hold a session, path {story.via(alice, bob)}")
    rtt = sim.run(alice.ping(bob))
    answer = f"{rtt * 1000:.0f} ms" if rtt is not None else "no answer"
    story.say(f"ping alice -> bob through the tunnel: {answer}")
    sim.spawn(story.pinger(alice, bob), name="demo pings")
    story.run_for(SETTLE_S)

    carrier = mesh.relay_by_key(alice.relay_for(bob))
    failover_s: float | None = None
    if kind is PathKind.RELAYED and carrier is not None:
        t_kill = sim.now()
        story.say(f"{carrier.name} loses power (it carries alice <-> bob)")
        carrier.kill()

        def failed_over() -> bool:
            relay = alice.relay_for(bob)
            return (
                relay is not None
                and relay != carrier.key
                and story.ping.down_since is None
                and story.ping.answered > 0
                and bool(story.outages)
                and story.outages[-1][0] >= t_kill
            )

        story.run_until(failed_over, FAILOVER_TIMEOUT_S)
        failover_s = story.outages[-1][1] - t_kill
        story.say(
            f"failover done: pings answered again {failover_s:.1f} s after the relay died"
            f" (one ping a second)"
        )
        story.run_for(SETTLE_S)

    nat = bob.host.nat
    direct_at: float | None = None
    full_cone = NatKind.FULL_CONE.behavior
    if nat is not None and full_cone is not None:
        t_open = sim.now()
        story.say("bob's NAT box is reconfigured as a full cone: it keeps WireGuard's port")
        story.say("and lets anyone in once bob has sent out; the agents retry direct now and then")
        nat.reconfigure(full_cone)
        try:
            direct_at = story.run_until(
                lambda: alice.path(bob) is PathKind.DIRECT and bob.path(alice) is PathKind.DIRECT,
                BACK_TO_DIRECT_TIMEOUT_S,
            )
        except TimeoutError:
            story.say(f"still not direct {BACK_TO_DIRECT_TIMEOUT_S:.0f} s after the NAT opened")
        else:
            story.run_for(2 * STEP_S)  # let the path watcher report both sides first
            story.say(f"direct again, {direct_at - t_open:.1f} s after bob's NAT opened")
            story.run_for(SETTLE_S)

    note()
    note("summary (virtual time):")
    note(f"  tunnel up after {t:.1f} s, {kind.value if kind else 'no path'}")
    if failover_s is not None:
        note(f"  relay failover: pings lost for {failover_s:.1f} s")
    if direct_at is not None:
        note(f"  back to direct at {direct_at:.1f} s")
    lost = story.ping.lost
    note(f"  pings: {story.ping.answered} answered, {lost} lost")
    for r in relays:
        note(f"  {r.name}: {r.packets_forwarded} data frames forwarded")
    wall = time.monotonic() - story.wall_start
    note(f"  {sim.now():.0f} virtual seconds in {wall:.1f} s of wall time")


def run_simulated_demo(*, speed: float = 0.0, verbose: int = 0, out: TextIO | None = None) -> int:
    """Tell the story; 0 if the tunnel came up (and failed over), else 1."""
    out = out if out is not None else sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(_exit_on_sigterm())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="wgrelay-demo-"))
        story = _Story(out, speed)
        stack.enter_context(_virtual_time_logging(story, verbose))
        sim = stack.enter_context(Simulation(seed=SEED, trace=False))
        story.sim = sim
        mesh = SimMesh(sim, Path(tmp))
        relays = [
            mesh.add_relay("relay-1", link=LinkSpec(delay_s=0.010)),
            mesh.add_relay("relay-2", link=LinkSpec(delay_s=0.025)),
        ]
        alice = mesh.add_peer("alice", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
        bob = mesh.add_peer("bob", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.030))
        mesh.connect(alice, bob)
        story.mesh = mesh
        story.names = {r.key.short(): r.name for r in relays}
        story.names.update({p.public.short(): p.name for p in (alice, bob)})
        try:
            _tell(story, relays, alice, bob)
        except TimeoutError:
            story.say("the story did not go as it should: giving up")
            return 1
    return 0


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, through the cleanup (the
    temporary state directory); its default would kill the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_nat_matrix(out: TextIO | None = None) -> int:
    """Print docs/NAT_MATRIX.md (computed now, by the production agents)."""
    out = out if out is not None else sys.stdout
    logger = logging.getLogger("wgrelay")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the UDP-blocked cells warn on every retry
    try:
        text = render_markdown(compute())
    finally:
        logger.setLevel(level)
    out.write(text)
    out.flush()
    return 0
