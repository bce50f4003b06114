"""Private paths' sealed boxes and bodies (proto/sealed.py): who can open
what, fixed sizes, the replay window, codecs that only ever raise
RemoteProtocolError on bad input."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.errors import LocalProtocolError, Malformed, RemoteProtocolError
from wgrelay.keys import PrivateKey, RelayIdentity
from wgrelay.proto.constants import MsgType
from wgrelay.proto.messages import decode_body, encode_body
from wgrelay.proto.sealed import (
    EXIT_SEALED_LEN,
    PEER_SEALED_LEN,
    SEALED_WINDOW_S,
    ConnectionRequestSealed,
    LegOpenSealed,
    SealedReplays,
    SessionOfferSealed,
    Undecryptable,
    open_for_exit,
    open_for_peer,
    seal_for_peer,
    seal_request,
)

A = PrivateKey.generate()
B = PrivateKey.generate()
R2 = RelayIdentity.generate()
MS = 1_700_000_000_000


def test_the_exit_relay_learns_the_target_and_only_the_target_learns_the_initiator() -> None:
    box = seal_request(A.public_key(), B.public_key(), R2.public, MS)
    assert len(box) == EXIT_SEALED_LEN
    exit_view = open_for_exit(box, R2)
    assert exit_view.target == B.public_key()
    assert exit_view.issued_ms == MS
    # the exit relay's view holds A's key nowhere, in any form
    assert A.public_key().raw not in exit_view.peer_box
    peer_view = open_for_peer(exit_view.peer_box, B)
    assert peer_view.initiator == A.public_key()
    assert peer_view.exit_relay == R2.public
    assert peer_view.issued_ms == MS
    # and the box itself shows neither key
    for key in (A.public_key().raw, B.public_key().raw):
        assert key not in box


def test_boxes_open_only_for_their_owner() -> None:
    box = seal_request(A.public_key(), B.public_key(), R2.public, MS)
    with pytest.raises(Undecryptable):
        open_for_exit(box, RelayIdentity.generate())
    inner = open_for_exit(box, R2).peer_box
    with pytest.raises(Undecryptable):
        open_for_peer(inner, A)  # not even the one who sealed it
    tampered = bytearray(box)
    tampered[100] ^= 1
    with pytest.raises(Undecryptable):
        open_for_exit(bytes(tampered), R2)
    with pytest.raises(Malformed):
        open_for_exit(box[:-1], R2)


def test_every_box_differs_and_has_one_size() -> None:
    boxes = {seal_request(A.public_key(), B.public_key(), R2.public, MS) for _ in range(4)}
    assert len(boxes) == 4  # an ephemeral key per box: two requests do not link
    other = seal_request(B.public_key(), PrivateKey.generate().public_key(), R2.public, 0)
    assert {len(b) for b in boxes} == {len(other)} == {EXIT_SEALED_LEN}
    peer_box = seal_for_peer(B.public_key(), A.public_key(), R2.public, MS)
    assert len(peer_box) == PEER_SEALED_LEN


def test_replays_refused_within_the_window_and_stale_boxes_outside_it() -> None:
    r = SealedReplays()
    window_ms = int(SEALED_WINDOW_S * 1000)
    assert r.check(b"d1", MS, MS) is None
    assert r.check(b"d1", MS, MS + 1000) == "replayed"
    assert r.check(b"d2", MS - window_ms - 1, MS) == "stale"
    assert r.check(b"d3", MS + window_ms + 1, MS) == "stale"  # from the future too
    # after its window the entry is forgotten, and the box is stale anyway
    assert r.check(b"d1", MS, MS + window_ms + 1) == "stale"
    assert len(r) == 0


def test_replay_memory_is_bounded() -> None:
    r = SealedReplays(size=3)
    for i in range(5):
        assert r.check(bytes([i]), MS, MS) is None
    assert len(r) <= 3
    assert r.check(bytes([4]), MS, MS) == "replayed"  # the newest are kept


SID = bytes(range(8))


@pytest.mark.parametrize(
    "body",
    [
        ConnectionRequestSealed(7, R2.public, os.urandom(EXIT_SEALED_LEN)),
        LegOpenSealed(SID, os.urandom(EXIT_SEALED_LEN), 2),
        LegOpenSealed(SID, os.urandom(EXIT_SEALED_LEN), 3),
        SessionOfferSealed(SID, os.urandom(PEER_SEALED_LEN), 52000),
    ],
)
def test_bodies_round_trip(
    body: ConnectionRequestSealed | LegOpenSealed | SessionOfferSealed,
) -> None:
    back: object = decode_body(body.TYPE, encode_body(body))
    assert back == body


def test_bodies_refuse_wrong_sizes_and_hops() -> None:
    with pytest.raises(LocalProtocolError):
        encode_body(ConnectionRequestSealed(1, R2.public, bytes(EXIT_SEALED_LEN - 1)))
    with pytest.raises(LocalProtocolError):
        encode_body(SessionOfferSealed(SID, bytes(EXIT_SEALED_LEN)))
    with pytest.raises(LocalProtocolError):
        encode_body(LegOpenSealed(SID, bytes(EXIT_SEALED_LEN), 4))
    raw = bytearray(encode_body(LegOpenSealed(SID, bytes(EXIT_SEALED_LEN), 2)))
    raw[8] = 9
    with pytest.raises(Malformed):
        decode_body(MsgType.LEG_OPEN_SEALED, bytes(raw))


@given(
    st.sampled_from(
        [MsgType.CONNECTION_REQUEST_SEALED, MsgType.LEG_OPEN_SEALED, MsgType.SESSION_OFFER_SEALED]
    ),
    st.binary(max_size=400),
)
@settings(max_examples=300)
def test_arbitrary_bytes_raise_only_remote_protocol_errors(t: MsgType, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(t, data)


@given(st.binary(min_size=PEER_SEALED_LEN, max_size=PEER_SEALED_LEN))
@settings(max_examples=50)
def test_arbitrary_boxes_never_open(box: bytes) -> None:
    with pytest.raises(Undecryptable):
        open_for_peer(box, B)


def test_a_full_memory_forgets_expired_boxes_before_one_still_in_its_window() -> None:
    """Review finding: only the oldest-inserted entries were looked at, and a
    full memory dropped the oldest even while it was still in its window and
    entries behind it had expired (a box dated ahead of the clock is kept
    longer than later ones dated behind it): a copy of it was then taken."""
    r = SealedReplays(size=3)
    window_ms = int(SEALED_WINDOW_S * 1000)
    assert r.check(b"ahead", MS + 100_000, MS) is None  # kept until MS + 220 s
    assert r.check(b"old1", MS - 110_000, MS) is None  # kept until MS + 10 s
    assert r.check(b"old2", MS - 110_000, MS) is None
    later = MS + 20_000  # both old ones expired, "ahead" still in its window
    assert r.check(b"new", later, later) is None
    assert r.check(b"ahead", MS + 100_000, later) == "replayed"
    assert len(r) <= 3
    assert MS + 100_000 + window_ms > later
