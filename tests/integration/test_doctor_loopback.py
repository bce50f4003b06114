"""``wgrelay doctor``'s gathering against real relays on 127.0.0.1.

Every outcome a relay probe can have, each produced for real: two open
relays (registered, with the address they saw our one socket at), a relay
that serves only its allowed keys (an authenticated refusal, timed with
public discovery queries), a relay whose real key is not the one in the
registry (silent), a port nothing listens on (ICMP refusal), and a clock
300 s off (the link follows the relays' clocks, the offset is measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wgrelay.discovery.registry import RegistryStore
from wgrelay.doctor.diagnose import diagnose, exit_code
from wgrelay.doctor.facts import Facts, ProbeOutcome, facts_from_json, facts_to_json
from wgrelay.doctor.findings import Level
from wgrelay.doctor.gather import GatherConfig, gather_facts
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.constants import MappingKind
from wgrelay.relay.access import AllowFilePolicy

from .relays import InProcRelay, inproc_relay

pytestmark = pytest.mark.timeout(60)

FAST = GatherConfig(answer_timeout_s=1.5, ping_timeout_s=1.0, refusal_wait_s=0.5)


def remember(state: Path, relays: list[tuple[PublicKey, Endpoint]]) -> None:
    """What ``wgrelay add-bootstrap-relay`` would have written."""
    store = RegistryStore(state / "relays.db")
    try:
        registry = store.load()
        for key, ep in relays:
            registry.add_bootstrap(key, ep)
        store.save(registry)
    finally:
        store.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def two_open_relays() -> AsyncIterator[tuple[InProcRelay, InProcRelay]]:
    async with inproc_relay() as r1, inproc_relay() as r2:
        yield r1, r2


def by_key(facts: Facts) -> dict[str, ProbeOutcome]:
    return {p.key: p.outcome for p in facts.relays}


def test_every_probe_outcome_from_real_relays(tmp_path: Path) -> None:
    allow = tmp_path / "allow"
    allow.write_text(f"{PrivateKey.generate().public_key()}\n")  # not the doctor's key
    impostor = RelayIdentity.generate().public  # the registry's key for a relay that has another
    nobody = RelayIdentity.generate().public

    async def scenario() -> Facts:
        async with (
            two_open_relays() as (r1, r2),
            inproc_relay(policy=AllowFilePolicy(allow)) as strict,
            inproc_relay() as other,
        ):
            remember(
                tmp_path,
                [
                    (r1.key, r1.endpoint),
                    (r2.key, r2.endpoint),
                    (strict.key, strict.endpoint),
                    (impostor, other.endpoint),
                    (nobody, ("127.0.0.1", closed_port())),
                ],
            )
            facts = await gather_facts(tmp_path, None, config=FAST)
            # the probes were authenticated round trips: the relays counted them
            assert r1.core.stats.control_received > 0
            return facts

    t0 = time.monotonic()
    facts = asyncio.run(scenario())
    took = time.monotonic() - t0
    outcomes = by_key(facts)
    assert facts.relays_known == 5
    assert facts.key_source == "throwaway"
    registered = [p for p in facts.relays if p.outcome is ProbeOutcome.REGISTERED]
    assert len(registered) == 2
    for p in registered:
        assert p.rtt_ms is not None
        assert 0 < p.rtt_ms < 500
        # one socket: both relays see the same 127.0.0.1 port, which is ours
        assert p.observed == p.local == registered[0].observed
        assert p.clock_offset_s is not None
        assert abs(p.clock_offset_s) < 1.0
    [strict_probe] = [p for p in facts.relays if p.outcome is ProbeOutcome.NOT_ALLOWED]
    assert strict_probe.rtt_ms is not None
    assert strict_probe.observed is None
    assert outcomes[str(impostor)] is ProbeOutcome.TIMEOUT
    assert outcomes[str(nobody)] is ProbeOutcome.REFUSED
    assert took < 10, took  # all relays at once, not one after another

    findings, verdict = diagnose(facts)
    assert verdict.kind is MappingKind.INDEPENDENT
    assert verdict.behind_nat is False
    lines = {(f.check, f.subject): f for f in findings}
    assert lines[("relay", str(nobody))].level is Level.FAIL
    assert "nothing listens" in lines[("relay", str(nobody))].summary
    assert lines[("relay", str(impostor))].level is Level.FAIL
    assert lines[("relay", str(strict_probe.key))].level is Level.OK
    assert exit_code(findings) == 1
    # the facts survive their JSON form: a recorded run diagnoses the same
    assert diagnose(facts_from_json(facts_to_json(facts))) == (findings, verdict)


def test_a_clock_five_minutes_fast_is_measured_and_fails(tmp_path: Path) -> None:
    async def scenario() -> Facts:
        async with two_open_relays() as (r1, r2):
            remember(tmp_path, [(r1.key, r1.endpoint), (r2.key, r2.endpoint)])
            return await gather_facts(tmp_path, None, config=FAST, wall=lambda: time.time() + 300.0)

    facts = asyncio.run(scenario())
    # the relays refused our timestamps at first; the link followed their
    # clocks and registered anyway, and their replies show how far off we are
    assert [p.outcome for p in facts.relays] == [ProbeOutcome.REGISTERED] * 2
    for p in facts.relays:
        assert p.clock_offset_s is not None
        assert abs(p.clock_offset_s + 300.0) < 1.0
    findings, _ = diagnose(facts)
    [clock] = [f for f in findings if f.check == "clock"]
    assert clock.level is Level.FAIL
    assert "300 s ahead of the relays'" in clock.summary
    assert exit_code(findings) == 1


def test_no_relays_known_fails_with_the_fix(tmp_path: Path) -> None:
    facts = asyncio.run(gather_facts(tmp_path, None, config=FAST))
    assert facts.relays_known == 0
    assert facts.relays == ()
    assert not (tmp_path / "relays.db").exists()  # the doctor writes nothing
    findings, _ = diagnose(facts)
    assert findings[0].level is Level.FAIL
    assert findings[0].fix is not None
    assert "add-bootstrap-relay" in findings[0].fix
