"""The fuzzing campaigns: the relay core and a client link, seeded, from the corpus.

``fuzz_relay`` builds a world (world.py) under one of the ``PRESETS`` relay
configurations, delivers every corpus seed once as it is, then for each input:
moves the fake clock (mostly milliseconds, sometimes seconds, rarely minutes,
so timers, expiry, cookie rotation and the skew window all happen), and sends
the relay one of: a freshly generated valid datagram, a corpus seed or an
input that did something new in this run (both re-sealed at the current time
with a fresh nonce and a valid cookie most of the time, so they stay
meaningful), a replay of any earlier datagram, or an honest datagram that was
held back (reordered) - each then mutated 0-3 times (mutators.py). A quarter
of the fresh ones speak as other relays: requests from r1, r2 (known) and rb
(not), and answers on the fuzzed relay's own channels to them. Two
stretches of inputs in five come as floods, microseconds apart (control
messages from few addresses and many new keys, among them a crowd that comes
back with its cookies and fills the registration table, or full-size
frames), so rate limits, cookies under load, eviction and the bandwidth cap
are taken too; every other
stretch of two thousand, 30% of what the relay sends r1 and r2 is lost (so
its probes time out and its lookups wait for the fuzzer's answers). Every 50
inputs the honest peers put the registrations, sessions and the pending offer
back. After the last input: four simulated minutes pass, honest links start
over, and the relay must still register fresh peers (IPv4 and IPv6), open a
session between them and forward frames on it and on an honest session, and
r1 and r2 must be live members again holding the fresh peers' records.

``fuzz_client`` does the same to p0's ``RelayLink``, as its relay: p0 keeps a
ping, a query and session requests in flight so answers can match (half of
them lost on the way, so the real relay's answer does not always come
first), its reactions go to the real relay, and afterwards the fuzzed link
itself must register and carry a session again.

Every input is checked by the oracles (oracle.py); a run returns a ``Report``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fuzz import seeds as corpus_io
from tests.fuzz.generators import FLOOD_SOURCES, LinkInputs, RelayInputs, wg_payload
from tests.fuzz.layout import ControlDraft, DataDraft, Draft, RawDraft, open_draft
from tests.fuzz.mutators import Mutator
from tests.fuzz.oracle import Finding, Tally, host_port, known_link_lockout
from tests.fuzz.world import SESSIONS, WORLD_SEED, Peer, World
from wgrelay.client.link import LinkState
from wgrelay.discovery.directory import Liveness
from wgrelay.keys import PublicKey
from wgrelay.proto.data import data_header
from wgrelay.proto.envelope import FLAG_COOKIE
from wgrelay.relay.admission import Addr
from wgrelay.relay.config import RelayConfig

_GENEROUS = 1e9
PRESETS: dict[str, RelayConfig] = {
    # rate limits and load cookies out of the way: the most inputs reach handlers
    "deep": RelayConfig(
        control_rate_per_ip=_GENEROUS,
        control_burst_per_ip=_GENEROUS,
        control_rate_per_key=_GENEROUS,
        control_burst_per_key=_GENEROUS,
        handshakes_before_cookies=10**9,
    ),
    # what a relay runs with
    "default": RelayConfig(),
    # every quota small: eviction, refusals, cookies before any X25519, bandwidth
    "tight": RelayConfig(
        max_connections=4,
        max_bandwidth_kbps=1,
        max_sessions_per_peer=2,
        max_pending_per_peer=1,
        max_registrations=8,
        max_registrations_per_source=1,
        max_sessions_per_source=2,
        rate_table_size=8,
        key_cache_size=6,
        handshakes_before_cookies=0,
        control_rate_per_key=5.0,
        control_burst_per_key=10.0,
    ),
    # a small, full registration table: eviction of idle peers, refusals
    "crowded": RelayConfig(
        max_registrations=9,
        max_registrations_per_source=3,
        control_rate_per_ip=_GENEROUS,
        control_burst_per_ip=_GENEROUS,
        control_rate_per_key=_GENEROUS,
        control_burst_per_key=_GENEROUS,
        handshakes_before_cookies=10**9,
    ),
}

Coverage = Callable[[Callable[[], object]], bool]
"""Runs one delivery and says whether it reached code not reached before."""
Found = Callable[[str, str, bytes, Addr | None], None]
"""Told about every input that did something new, or hit a known bug (kind
"known:<bug>"): (core, kind, data, source)."""


@dataclass
class Report:
    core: str
    preset: str
    seed: int
    inputs: int = 0
    seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)
    findings: list[Finding] = field(default_factory=list)
    known: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: int = 0
    quota_hits: Counter[str] = field(default_factory=Counter)
    """The relay's refusals and evictions, by quota."""
    federation: Counter[str] = field(default_factory=Counter)
    """The fuzzed relay's federation counters (what its gossip, store and
    lookups made of what they got)."""
    after: list[str] = field(default_factory=list)
    """What did not work after the fuzzing (the cores must still serve)."""

    def fingerprint(self) -> str:
        """What the run did, as a short hash (the same run must give the same
        one in any process, whatever its PYTHONHASHSEED)."""
        t = self.tally
        what = [
            sorted(t.reasons.items()),
            sorted(t.handlers.items()),
            sorted(t.known.items()),
            sorted(self.mutations.items()),
            sorted(self.kinds.items()),
            sorted(self.federation.items()),
            self.outcomes,
            [str(f) for f in self.findings],
            self.after,
        ]
        return hashlib.sha256(repr(what).encode()).hexdigest()[:16]

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        t = self.tally
        top = ", ".join(f"{k} {v}" for k, v in t.reasons.most_common(12))
        handlers = ", ".join(f"{k} {v}" for k, v in sorted(t.handlers.items()))
        fed = ", ".join(
            f"{k} {v}" for k, v in sorted(self.federation.items()) if not k.startswith("sent_")
        )
        return (
            f"{self.core}/{self.preset} seed {self.seed}: {self.inputs} inputs in"
            f" {self.seconds:.1f} s ({self.rate:.0f}/s); checked {t.inputs} (with honest"
            f" traffic): {t.handled} handled, {t.dropped} dropped, {t.forwarded} forwarded;"
            f" {self.outcomes} distinct outcomes; findings {len(self.findings)};"
            f" known {dict(self.known)}\n  drops: {top}\n  handlers: {handlers}"
            + (f"\n  federation: {fed}" if fed else "")
        )


def _world_seed(seed: int, world_seed: int | None) -> int:
    """The relay's own randomness (session ids, cookie secrets) for this run.

    Never ``WORLD_SEED`` itself, which make_corpus --explore uses: a cookie in
    a found input was valid at that relay, and must not be at this one (the
    oracle only knows the cookies it saw this relay send)."""
    return world_seed if world_seed is not None else WORLD_SEED + 1 + seed


def clock_step(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.7:
        return rng.uniform(0.0, 0.003)
    if r < 0.966:
        return rng.uniform(0.003, 0.05)
    if r < 0.9965:
        return rng.uniform(0.2, 2.0)
    if r < 0.9995:
        return rng.uniform(5.0, 40.0)
    return rng.uniform(100.0, 300.0)


def _refresh(d: Draft, gen: RelayInputs | LinkInputs) -> None:
    """Make a stored datagram meaningful now: current time, fresh nonce, a
    valid cookie where it had one, a live session id."""
    rng = gen.rng
    if isinstance(d, ControlDraft):
        d.ts = gen.now_us() + rng.choice([0, 1, 1000])
        d.nonce = rng.randbytes(24)
        if d.cookie is not None:
            d.cookie = gen.cookie_for(d.sender) or d.cookie
    elif isinstance(d, DataDraft) and rng.random() < 0.7:
        d.sid = gen.some_sid()


def _no_earlier_cookie(d: Draft, world: World, gen: RelayInputs) -> None:
    """A stored input's cookie may be one an earlier relay with the same secret
    sent (make_corpus --explore): valid here, but the oracle never saw this
    relay send it. Only this run's cookies, or a wrong one."""
    hp = host_port(gen.src)
    book = world.oracle.cookie_book
    if isinstance(d, ControlDraft):
        if d.cookie is not None and (d.cookie, d.sender, hp) not in book:
            d.cookie = gen.cookie_for(d.sender) or bytes(16)
    elif isinstance(d, RawDraft) and len(d.data) >= 75 and d.data[2] & FLAG_COOKIE:
        raw = d.data
        if (raw[59:75], raw[3:35], hp) not in book:
            d.data = raw[:59] + bytes(16) + raw[75:]


def _note(report: Report, kind: str, names: list[str]) -> None:
    report.kinds[kind] += 1
    report.mutations.update(names)


# ---------------------------------------------------------------- relay


def fuzz_relay(
    inputs: int,
    seed: int,
    preset: str = "deep",
    *,
    corpus: list[corpus_io.Seed] | None = None,
    strict: bool = False,
    coverage: Coverage | None = None,
    found: Found | None = None,
    world_seed: int | None = None,
) -> Report:
    report = Report("relay", preset, seed)
    started = time.perf_counter()
    world = World(PRESETS[preset], seed=_world_seed(seed, world_seed), strict=strict).setup()
    rng = random.Random(seed)
    gen = RelayInputs(world, rng)
    mut = Mutator(rng, gen)
    keys = {p.public: p.to_relay for p in world.parties if p.to_relay is not None}
    answers = {world.by_name[n].public: k.tx for n, k in gen.answer_keys.items()}
    history: deque[tuple[bytes, Addr]] = deque(maxlen=256)

    def tap(d: bytes, src: Addr) -> None:
        history.append((d, src))
        gen.observe(d)

    world.taps.append(tap)
    world.out_taps.append(gen.observe_out)
    for s in world.relay.sessions.values():
        gen.closed_sids.append(s.sid)  # stays interesting once it is closed
    seeds = [(s.data, s.src or world.peers[0].addr, s.kind) for s in corpus or []]
    pool: list[tuple[bytes, Addr, str]] = []
    outcomes: set[tuple[object, ...]] = set()

    def deliver(data: bytes, src: Addr, kind: str) -> None:
        if coverage is not None:
            new = coverage(lambda: world.send(data, src))
        else:
            world.send(data, src)
            new = False
        sig = world.oracle.signature
        if sig not in outcomes:
            outcomes.add(sig)
            new = new or coverage is None
        if new:
            if len(pool) < 512:
                pool.append((data, src, kind))
            if found is not None:
                found("relay", kind, data, src)
        if found is not None and world.oracle.last_known is not None:
            found("relay", f"known:{world.oracle.last_known}", data, src)

    jar = world.relay._admission.cookies
    world.oracle.earlier_cookies = lambda c, key, hp: jar.check(c, key, hp, world.now)
    for data, src, kind in seeds:  # the corpus as it is, once, at its own time
        deliver(data, src, f"corpus/{kind}")
        report.kinds["corpus"] += 1
    world.oracle.earlier_cookies = None
    for i in range(inputs):
        # two stretches of a thousand inputs in five come as floods,
        # microseconds apart: control messages from few addresses and new
        # keys (rate limits, cookies under load), then full-size frames
        # (bandwidth); every other stretch of two thousand reorders
        gen.flood = {1: "data", 3: "control"}.get((i // 1000) % 5, "")
        world.advance(rng.uniform(0.0, 2e-5) if gen.flood else clock_step(rng))
        if i % 50 == 0:
            world.maintain()
            world.holdback = 0.05 if (i // 2000) % 2 else 0.0
            world.relay_loss = 0.3 if (i // 2000) % 2 else 0.0
        partner = history[rng.randrange(len(history))][0] if history else None
        r = rng.random()
        names: list[str] = []
        if r < 0.04 and world.held:
            data, src = world.held.pop(rng.randrange(len(world.held)))
            kind = "reordered"
        elif r < 0.10 and history:
            data, src = history[rng.randrange(len(history))]
            if rng.random() < 0.3:
                src = gen.source(rng.choice(world.parties))
            kind = "replay"
        elif r < 0.35 and (seeds or pool):
            data, src, kind = rng.choice(pool if pool and rng.random() < 0.5 else seeds or pool)
            gen.src = src
            draft = open_draft(data, keys, answers)
            if rng.random() < 0.8:
                _refresh(draft, gen)
            _no_earlier_cookie(draft, world, gen)
            data, names = mut.mutate(draft, partner, rng.choice([0, 1, 1, 2, 3]))
            src = gen.src
            kind = "seed/" + kind.split("/", 1)[-1]
        else:
            draft, kind = gen.fresh()
            src = gen.src
            data, names = mut.mutate(draft, partner, rng.choice([0, 0, 1, 1, 1, 2, 3]))
        if gen.flood == "control" and kind != "control/register/crowd" and rng.random() < 0.85:
            src = rng.choice(FLOOD_SOURCES)  # (the crowd's cookies are for where it chose)
        _note(report, kind, names)
        deliver(data, src, kind)
    report.after = after_relay(world)
    _finish(report, world, started, inputs, len(outcomes))
    return report


def after_relay(world: World) -> list[str]:
    """Fresh peers register, open a session, frames forward; honest ones too."""
    problems: list[str] = []
    world.holdback = world.relay_loss = 0.0
    world.held.clear()
    for k in range(240):  # fuzzed registrations expire, buckets refill
        world.advance(1.0)
        if k % 10 == 0:
            world.maintain()
    for p in world.peers:
        world.renew_link(p)  # the fuzzer spoke with their keys: start them over
    world.maintain()
    world.maintain()
    for a, b in SESSIONS:
        sid = world.session_id(a, b)
        if sid is None:
            problems.append(f"no session {a}-{b} after the honest peers started over")
            continue
        problems += _frame_forwards(world, a, b, sid)
    fa = world.add_peer(f"fresh-a{len(world.peers)}", ("198.18.0.1", 41000 + len(world.peers)))
    fb = world.add_peer(f"fresh-b{len(world.peers)}", ("2001:db8:f::b", 41000, 0, 0))
    for p in (fa, fb):
        p.link.connect(world.now)
    world.pump()
    for p in (fa, fb):
        if p.link.state != LinkState.REGISTERED:
            problems.append(f"fresh peer {p.party.name} not registered: {p.link.state}")
    fa.link.request_session(fb.pub, world.now)
    world.pump()
    sid = fa.link.session_of.get(fb.pub)
    if sid is None or fb.link.session_of.get(fa.pub) != sid:
        problems.append("fresh peers got no session")
    else:
        problems += _frame_forwards(world, fa.party.name, fb.party.name, sid)
        problems += _frame_forwards(world, fb.party.name, fa.party.name, sid)
    return problems + _federation_serves(world, [fa, fb])


def _federation_serves(world: World, fresh: list[Peer]) -> list[str]:
    """r1 and r2 are live members again, and hold the fresh peers' records."""
    problems = []
    fed = world.relay.federation
    for r in world.relays:
        m = fed.directory.get(r.identity.public)
        if m is None or m.liveness is Liveness.DEAD:
            problems.append(f"{r.name} is {m.liveness.value if m else 'unknown'} to the relay")
        held = r.core.federation
        problems += [
            f"{r.name} holds no location record of {p.party.name}"
            for p in fresh
            if not held.local_location(p.pub, world.now)
        ]
    return problems


def _frame_forwards(world: World, a: str, b: str, sid: bytes) -> list[str]:
    frame = data_header(sid) + wg_payload(random.Random(0), 64)
    out = world.send(frame, world.peer[a].addr)
    if out != [(frame, world.peer[b].addr)]:
        return [f"a frame {a}->{b} on {sid.hex()} went to {[d for _, d in out]}"]
    return []


def _finish(report: Report, world: World, started: float, inputs: int, outcomes: int) -> None:
    report.seconds = time.perf_counter() - started
    report.inputs = inputs
    report.findings = world.findings()
    report.outcomes = outcomes
    report.quota_hits = Counter(world.relay.stats.quota_hits)
    report.federation = Counter(world.relay.federation.counters)
    report.tally = world.oracle.tally if report.core == "relay" else report.tally
    report.known = world.oracle.tally.known + world.link_known()


# ---------------------------------------------------------------- client


def fuzz_client(
    inputs: int,
    seed: int,
    *,
    corpus: list[corpus_io.Seed] | None = None,
    strict: bool = False,
    coverage: Coverage | None = None,
    found: Found | None = None,
    world_seed: int | None = None,
) -> Report:
    report = Report("client", "deep", seed)
    started = time.perf_counter()
    world = World(PRESETS["deep"], seed=_world_seed(seed, world_seed), strict=strict).setup()
    rng = random.Random(seed)
    target = world.peer["p0"]
    gen = LinkInputs(world, rng, target)
    mut = Mutator(rng, gen)
    gen.vary_announcement = mut.announcement
    relay_key = world.identity.x25519_public
    history: deque[bytes] = deque(maxlen=128)
    world.taps.append(lambda d, src: gen.observe(d) if src == target.addr else None)
    world.out_taps.append(lambda d, dst: history.append(d) if dst == target.addr else None)
    seeds = [(s.data, s.kind) for s in corpus or []]
    pool: list[tuple[bytes, str]] = []
    outcomes: set[tuple[object, ...]] = set()
    others = [PublicKey(p.public) for p in world.parties if p.name not in ("p0", "zero", "low")]

    def deliver(data: bytes, kind: str) -> None:
        def run() -> None:
            for d in target.oracle.deliver(data, world.now):
                world.send(d, target.addr)

        oracle = target.oracle
        if coverage is not None:
            new = coverage(run)
        else:
            run()
            new = False
        sig = oracle.signature
        if sig not in outcomes:
            outcomes.add(sig)
            new = new or coverage is None
        if new:
            if len(pool) < 512:
                pool.append((data, kind))
            if found is not None:
                found("client", kind, data, None)
        if found is not None and oracle.last_known is not None:
            found("client", f"known:{oracle.last_known}", data, None)
        if oracle.broken:
            world.renew_link(target)
        world.pump()

    for data, kind in seeds:
        deliver(data, f"corpus/{kind}")
        report.kinds["corpus"] += 1
    for i in range(inputs):
        world.advance(clock_step(rng))
        if i % 10 == 0:
            world.maintain()
            keep_asking(target, rng.choice(others), rng.random() < 0.5, world.now)
            # the relay answers at once; half the time a request is lost on
            # its way, so the fuzzer's answers find it still waiting
            for d in target.oracle.collect(world.now, b""):
                gen.observe(d)
                if rng.random() < 0.5:
                    world.send(d, target.addr)
            world.pump()
        partner = history[rng.randrange(len(history))] if history else None
        key = target.party.from_relay
        assert key is not None
        r = rng.random()
        names: list[str] = []
        if r < 0.08 and history:
            data, kind = history[rng.randrange(len(history))], "replay"
        elif r < 0.33 and (seeds or pool):
            data, kind = rng.choice(pool if pool and rng.random() < 0.5 else seeds or pool)
            draft = open_draft(data, {relay_key: key})
            if rng.random() < 0.8:
                _refresh(draft, gen)
            data, names = mut.mutate(draft, partner, rng.choice([0, 1, 1, 2, 3]))
            kind = "seed/" + kind.split("/", 1)[-1]
        else:
            fresh, kind = gen.fresh()
            data, names = mut.mutate(fresh, partner, rng.choice([0, 0, 1, 1, 1, 2, 3]))
        _note(report, kind, names)
        deliver(data, kind)
    stuck: Counter[str] = Counter()
    report.after = after_client(world, stuck, strict)
    _finish(report, world, started, inputs, len(outcomes))
    report.known += stuck
    report.tally = _sum([o.tally for o in [*world.retired, target.oracle] if o.name == "p0"])
    return report


def keep_asking(target: Peer, other: PublicKey, locate: bool, now: float) -> None:
    """Requests in flight, so fuzzed answers can match one."""
    link, api = target.link, target.oracle.api
    api("ping", lambda: link.ping(now), now)
    api("query", lambda: link.query(now, locate=other if locate else None), now)
    api("request_session", lambda: link.request_session(other, now), now)
    api("heartbeat_now", lambda: link.heartbeat_now(now), now)


def _sum(tallies: list[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.inputs += t.inputs
        total.handled += t.handled
        total.dropped += t.dropped
        total.reasons.update(t.reasons)
        total.handlers.update(t.handlers)
        total.known.update(t.known)
    return total


def after_client(world: World, known: Counter[str], strict: bool = False) -> list[str]:
    """The fuzzed link registers again and carries a session to p1."""
    problems: list[str] = []
    target = world.peer["p0"]
    for k in range(240):
        world.advance(1.0)
        if k % 10 == 0:
            world.maintain()
    world.maintain()
    link = target.link
    p1 = world.peer["p1"]
    now = world.now
    target.oracle.api("request_session", lambda: link.request_session(p1.pub, now), now)
    world.pump()
    sid = link.session_of.get(p1.pub)
    if link.state != LinkState.REGISTERED:
        problems.append(f"the fuzzed link is {link.state.value}, not registered")
    if sid is None or sid not in world.relay.sessions:
        problems.append("the fuzzed link has no session to p1 the relay knows")
    else:
        problems += _frame_forwards(world, "p0", "p1", sid)
    stuck = known_link_lockout(link, world.wall_us())
    if problems and stuck is not None and not strict:
        known[stuck] += 1
        return []
    return problems
