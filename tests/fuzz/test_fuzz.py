"""Structure-aware fuzzing of the relay core and the client link (issue 8).

Fast runs (a few thousand inputs a core) in the normal suite, long ones
(100k+ into the relay core, 25k+ into a link) in the slow suite; all seeded
and started from the corpus in tests/fuzz/corpus/. What is generated, how it
is mutated and what is checked after every input: generators.py,
mutators.py, oracle.py. Known bugs are matched precisely and reported by
test_fuzz_findings.py; anything else fails here with the input that did it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.fuzz import make_corpus
from tests.fuzz import seeds as corpus_io
from tests.fuzz.fuzzer import PRESETS, Report, fuzz_client, fuzz_relay
from tests.fuzz.layout import ControlDraft
from tests.fuzz.udp import fuzz_udp
from tests.fuzz.world import ADDRESS_POOL, World
from wgrelay.proto.constants import MsgType
from wgrelay.proto.envelope import FLAG_FROM_SERVER, ChannelKeys
from wgrelay.proto.federation import Gossip, GossipAck
from wgrelay.proto.messages import Body, Ping, encode_body
from wgrelay.relay.admission import Addr

REPO = Path(__file__).resolve().parents[2]

RELAY_HANDLERS = {
    "REGISTER",
    "HEARTBEAT",
    "CONNECTION_REQUEST",
    "SESSION_ANSWER",
    "SESSION_CLOSE",
    "SESSION_HOLD",
    "PUNCH",
    "PING",
    "DISCOVERY_QUERY",
    "RECEIPT",
    "CREDIT_QUERY",
    "CONNECTION_REQUEST_SEALED",
    "LEG_RTT_QUERY",
}
FEDERATION_HANDLERS = {
    "GOSSIP",
    "DIGEST",
    "PULL",
    "LOCATION_STORE",
    "PROBE_REQUEST",
    "LEG_OPEN",
    "LEG_ANSWER",
    "LEG_CLOSE",
    "RECEIPTS",
    "LEG_OPEN_SEALED",
}
"""Relay-to-relay requests: their handler runs for any sender (and drops
what a relay it does not know sends)."""
FEDERATION_ANSWERS = {
    f"answer:{name}"
    for name in (
        "Pong",
        "GossipAck",
        "DigestReply",
        "PullReply",
        "LocationAck",
        "ProbeAnswer",
        "DiscoveryResponse",
        "Error",
        "CookieReply",
        "ReceiptsAck",
    )
}
"""What the federation took on the relay's own channels (and cookie replies it repeated for)."""
FEDERATION_VERDICTS = {
    "announcement_new",
    "announcement_newer",
    "announcement_known",
    "announcement_self",
    "announcement_future",
    "announcement_expired",
    "bad_announcement",
    "bad_location",
    "location_unknown_home",
    "location_future",
    "location_expired",
    "location_not_newer",
}
"""What the relay's directory and location store made of what it was sent
(the corpus has one of each: a preset that admits the corpus's relays reaches
them all whatever the seed)."""
FEDERATION_VERDICTS_TIGHT = {
    "announcement_new",
    "announcement_known",
    "announcement_newer",
    "announcement_self",
    "bad_announcement",
    "bad_location",
    "location_not_newer",
}
"""Under "tight" a relay's keys fall out of the 6-entry key cache and it needs
a cookie for each message: the corpus's requests are refused, the fuzzer's
get through less often."""
FEDERATION_VERDICTS_LONG = {"location_wrong_peer"}
"""Only from the fuzzer's answer to one of the relay's own lookups while it
waits (a holder slow or lost): a signed record for another peer than the one
asked about. No corpus seed can carry a live query id, so only long runs
are sure to get there."""
LINK_HANDLERS = {
    "Registered",
    "HeartbeatAck",
    "ConnectionResponse",
    "SessionOffer",
    "SessionOfferSealed",
    "SessionClose",
    "Punch",
    "Pong",
    "DiscoveryResponse",
    "Error",
    "ReceiptRequest",
    "CreditReport",
    "LegRttReply",
}
# every drop reason a run must reach, beyond those of the preset (a long run
# reaches the rarer ones too)
RELAY_REASONS = {
    "truncated",
    "oversize",
    "unknown_type",
    "bad_version",
    "malformed",
    "trailing_bytes",
    "wrong_direction",
    "auth_failed",
    "replayed",
    "stale_timestamp",
    "unknown_session",
    "spoofed_source",
    "session_not_ready",
    "not_wireguard",
    "not_allowed",
    "unproven_address",
    "unexpected",
    "channel_auth_failed",
}
RELAY_REASONS_LONG = {"bad_address", "stale_rebind"}
PRESET_REASONS = {
    "deep": set(),
    "default": {"rate_limited_ip", "needs_cookie"},
    "tight": {"needs_cookie", "bad_cookie", "rate_limited_key"},
    "crowded": set(),
}
LINK_REASONS = {
    "truncated",
    "oversize",
    "unknown_type",
    "bad_version",
    "malformed",
    "trailing_bytes",
    "wrong_direction",
    "auth_failed",
    "replayed",
    "stale_timestamp",
    "wrong_sender",
    "unsolicited_cookie",
    "unexpected",
}
LINK_LOCATION_REASONS = {"location_mismatch", "location_auth_failed", "location_malformed"}
"""What a link makes of a LOCATION record in an answer to its lookup that does
not hold: not the peer asked about or not the relay named, a signature that
does not verify, a layout that does not parse (a response, not a datagram
drop). A fast run gets the first and one of the others; a long one, all."""


def assert_clean(report: Report) -> None:
    print(report.summary())
    found = "\n".join(str(f) for f in report.findings[:5])
    assert not report.findings, f"{len(report.findings)} findings, the first:\n{found}"
    assert not report.after, report.after
    assert report.tally.inputs >= report.inputs


def check_relay_reach(
    report: Report | list[Report],
    preset: str,
    more: frozenset[str] = frozenset(),
    long: bool = False,
) -> None:
    """The fuzzer got everywhere it should: every handler, every drop reason,
    every answer the federation takes, every verdict on what it is sent (over
    all the runs given: whether a run reaches a branch that needs a burst of
    luck, cookies under load say, depends on its seed and on every change to
    what the cores do with their randomness)."""
    reports = report if isinstance(report, list) else [report]
    handlers = set().union(*(r.tally.handlers for r in reports))
    reasons = set().union(*(r.tally.reasons for r in reports))
    seen = set().union(*(r.federation for r in reports))
    assert handlers == RELAY_HANDLERS | FEDERATION_HANDLERS | FEDERATION_ANSWERS
    verdicts = FEDERATION_VERDICTS_TIGHT if preset == "tight" else FEDERATION_VERDICTS
    verdicts = verdicts | (FEDERATION_VERDICTS_LONG if long else set())
    missing = verdicts - seen
    assert not missing, f"the federation never saw: {missing}"
    assert all(r.tally.forwarded > 0 for r in reports)
    missing = (RELAY_REASONS | PRESET_REASONS[preset] | more) - reasons
    assert not missing, f"never reached: {missing}"
    assert all(r.tally.reasons["internal_error"] == 0 for r in reports)


def check_link_reach(report: Report, long: bool = False) -> None:
    t = report.tally
    assert set(t.handlers) == LINK_HANDLERS
    missing = LINK_REASONS - set(t.reasons)
    assert not missing, f"never reached: {missing}"
    assert any(r.startswith("announcement_") for r in t.reasons)
    locations = LINK_LOCATION_REASONS & set(t.reasons)
    if long:
        missing = LINK_LOCATION_REASONS - locations
        assert not missing, f"never reached: {missing}"
    else:
        assert "location_mismatch" in locations
        assert len(locations) >= 2, f"no record that does not verify: {locations}"


# ---------------------------------------------------------------- fast


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_relay_core_under_structure_aware_fuzzing(preset: str) -> None:
    reports = [
        fuzz_relay(5000, seed=seed, preset=preset, corpus=corpus_io.load("relay"))
        for seed in (8, 9)
    ]
    for report in reports:
        assert_clean(report)
    check_relay_reach(reports, preset)


def test_client_link_under_structure_aware_fuzzing() -> None:
    report = fuzz_client(5000, seed=9, corpus=corpus_io.load("client"))
    assert_clean(report)
    check_link_reach(report)


def repeat_run() -> str:
    """A short run of each core (relay under "tight", where the most
    branches on the relay's own randomness are), fingerprinted."""
    a = fuzz_relay(500, seed=3, preset="tight", corpus=corpus_io.load("relay"))
    b = fuzz_client(250, seed=3, corpus=corpus_io.load("client"))
    return a.fingerprint() + b.fingerprint()


def test_a_run_repeats_exactly() -> None:
    """The same run twice here, and once in another process with another
    PYTHONHASHSEED (running meanwhile): nothing the fuzzer or the cores do
    depends on state left by an earlier run, or on the order of a set or dict
    of str, bytes or keys."""
    code = "from tests.fuzz.test_fuzz import repeat_run; print(repeat_run())"
    other_seed = "0" if os.environ.get("PYTHONHASHSEED") == "4321" else "4321"
    env = {**os.environ, "PYTHONHASHSEED": other_seed}
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as other:  # fmt: skip
        first = repeat_run()
        second = repeat_run()
        out, err = other.communicate(timeout=60)
    assert first == second
    assert other.returncode == 0, err[-2000:]
    assert out.split()[-1] == first, f"PYTHONHASHSEED={other_seed}"


def test_corpus_regenerates_byte_identical() -> None:
    assert make_corpus.check(corpus_io.CORPUS_DIR) == []
    # and in another process, with another hash seed: nothing depends on either
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [sys.executable, "-m", "tests.fuzz.make_corpus", "--check"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_corpus_covers_every_kind_of_datagram() -> None:
    relay = corpus_io.load("relay")
    client = corpus_io.load("client")
    types = Counter(s.data[0] for s in relay if s.data)
    for t in MsgType:
        assert types[int(t)], f"no relay seed of type {t.name}"
    client_types = {s.data[0] for s in client if s.data}
    assert {int(t) for t in MsgType} <= client_types
    assert any(s.kind.endswith("stranger-cookie") for s in relay)
    assert all(s.src is not None for s in relay)


# ---------------------------------------------------------------- the oracle is not blind


def ping_from_p0(world: World) -> bytes:
    p0 = world.by_name["p0"]
    return ControlDraft(
        int(MsgType.PING), 0, p0.public, bytes(range(24)), None, world.wall_us() + 1000,
        encode_body(Ping(1)), p0.to_relay,
    ).build()  # fmt: skip


def answer_anyone(world: World) -> None:
    """Break the relay: its admission answers every address as if proven."""
    admission = world.relay._admission
    reply = admission._reply

    def answering(
        body: Body, keys: ChannelKeys, sender: bytes, addr: Addr, now: float,
        proven: bool, request_size: int, echo: bytes, count: bool = True,
    ) -> None:  # fmt: skip
        reply(body, keys, sender, addr, now, True, request_size, echo, count)

    admission._reply = answering  # type: ignore[method-assign]


def test_oracle_sees_a_reply_to_an_unproven_address() -> None:
    """A relay that answered any address (as main did before issue 8) is caught."""
    world = World(PRESETS["deep"]).setup()
    answer_anyone(world)
    world.send(ping_from_p0(world), ADDRESS_POOL[0])
    assert [f.rule for f in world.findings()] == ["unproven_gets_only_cookies"]


def test_oracle_sees_a_drop_nobody_counted() -> None:
    world = World(PRESETS["deep"]).setup()
    world.relay._admission._drops = Counter()  # admission drops go nowhere
    world.send(bytes((MsgType.PING, 9)) + bytes(100), ADDRESS_POOL[0])
    assert [f.rule for f in world.findings()] == ["one_reason"]


def test_oracle_sees_an_internal_error() -> None:
    world = World(PRESETS["deep"]).setup()

    def broken(inb: object, body: object) -> None:
        raise RuntimeError("a bug")

    world.relay._handlers[MsgType.PING] = broken
    world.send(ping_from_p0(world), world.peer["p0"].addr)
    assert [f.rule for f in world.findings()] == ["no_internal_error"]


def gossip_from_r1(world: World) -> bytes:
    r1 = world.by_name["r1"]
    return ControlDraft(
        int(MsgType.GOSSIP), 0, r1.public, bytes(range(24)), None, world.wall_us() + 1000,
        encode_body(Gossip()), r1.to_relay,
    ).build()  # fmt: skip


def test_oracle_sees_a_relay_answered_at_an_unproven_address() -> None:
    """Known relays pass the access policy, never the cookie."""
    world = World(PRESETS["deep"]).setup()
    answer_anyone(world)
    world.send(gossip_from_r1(world), world.relays[0].addr)
    assert [f.rule for f in world.findings()] == ["unproven_gets_only_cookies"]


def test_oracle_sees_a_request_to_an_address_no_relay_announced() -> None:
    world = World(PRESETS["deep"]).setup()
    world.relay.federation._addr_of = lambda key: ADDRESS_POOL[0]  # type: ignore[method-assign]
    world.advance(1.5)  # a probe, gossip: all to the wrong address
    assert "asks_relays_where_announced" in {f.rule for f in world.findings()}


def test_oracle_sees_a_routed_answer_nobody_counted() -> None:
    world = World(PRESETS["deep"]).setup()
    world.relay._drops = Counter()  # the core's own drops go nowhere
    rb = world.by_name["rb"]  # the relay has no channel to rb: unexpected
    answer = ControlDraft(
        int(MsgType.GOSSIP_ACK), FLAG_FROM_SERVER, rb.public, bytes(24), None,
        world.wall_us() + 1000, encode_body(GossipAck(0)), rb.to_relay,
    ).build()  # fmt: skip
    world.send(answer, rb.home)
    assert [f.rule for f in world.findings()] == ["one_reason"]


# ---------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("preset", "inputs"),
    [("deep", 60_000), ("default", 30_000), ("tight", 30_000), ("crowded", 30_000)],
)
def test_relay_core_long_fuzz(preset: str, inputs: int) -> None:
    report = fuzz_relay(inputs, seed=20_240_808, preset=preset, corpus=corpus_io.load("relay"))
    assert_clean(report)
    more = RELAY_REASONS_LONG | ({"bandwidth"} if preset == "tight" else set())
    check_relay_reach(report, preset, frozenset(more), long=True)
    if preset in ("tight", "crowded"):
        assert report.quota_hits["evicted"] > 0
        assert report.quota_hits["registrations"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_client_link_long_fuzz() -> None:
    report = fuzz_client(40_000, seed=20_240_808, corpus=corpus_io.load("client"))
    assert_clean(report)
    check_link_reach(report, long=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_relay_process_under_fuzzing_over_udp(tmp_path: Path) -> None:
    """The same corpus and mutators against ``wgrelay start-relay`` on 127.0.0.1."""
    report = fuzz_udp(60_000, seed=20_240_808, state_dir=tmp_path / "relay")
    print(f"{report.sent} datagrams in {report.seconds:.1f} s; replies {dict(report.received)}")
    print(f"relay drops: {report.drops}")
    assert not report.problems, report.problems
    assert report.sent == 60_000
    assert report.received["cookie_reply"] > 0
    assert report.received["REGISTERED"] > 0  # fuzzed keys got all the way in
    assert report.drops.get("internal_error", 0) == 0
