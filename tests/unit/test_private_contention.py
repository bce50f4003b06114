"""Private paths under contention (relay/private_legs.py with
relay/contention.py): a full exit relay gives a private session's slot to a
pair with more credit like any leg's. The entry relay is told (LEG_CLOSE
PREEMPTED), the target hears PREEMPTED, and neither the relay's state nor
its log holds the hidden initiator's key (nor shows the token standing in
for it as if it were one)."""

from __future__ import annotations

import logging
import os

import pytest

from tests.unit.test_contention_core import _connect, _pair, _preempted, spy_relay_messages
from tests.unit.test_federation import WALL0
from tests.unit.test_private_legs import _everything, _leaks, _other_relay, _private_client
from wgrelay.keys import PrivateKey
from wgrelay.proto.constants import CloseReason
from wgrelay.proto.federation import LegClose
from wgrelay.proto.sealed import LegOpenSealed, seal_request
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.contention import StaticCredits
from wgrelay.testkit import CoreNet, registered

GB = 10**9


def test_a_displaced_private_session_tells_the_entry_relay_and_logs_no_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    net = CoreNet(RelayConfig(max_connections=2, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rider = _pair(net, credits, 0)
    assert _connect(net, *rider)
    b = _private_client(net)
    registered(net, b)
    r1 = _other_relay(net)
    a = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    net.advance(0.1)  # (the private session is the younger of the two at weight 1)
    box = seal_request(a, b.pub, net.ident.public, int(WALL0 * 1000))
    r1.send(LegOpenSealed(sid, box), net.clock.now)
    for data, dst in r1.to_others:
        if dst == b.addr:
            b.link.receive(data, net.clock.now)
    net.run()
    assert sid in net.relay.sessions
    told = spy_relay_messages(net)
    assert _connect(net, *_pair(net, credits, 100 * GB))
    assert sid not in net.relay.sessions
    assert told == [(r1.ident.public, LegClose(sid, CloseReason.PREEMPTED))]
    assert _preempted(b)
    assert _leaks(_everything(net.relay), a) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [f for f in (str(a), a.short(), a.raw.hex()) if f in text]
    assert f"session {sid.hex()} closed (preempted)" in text
    # the hidden side's token is not shown as if it were a peer's key
    assert f"session {sid.hex()} open: a private peer <-> {b.pub.short()}" in text
