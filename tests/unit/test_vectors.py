"""docs/PROTOCOL.md's test vectors and the code agree byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wgrelay.proto import parse_datagram
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.cookie import decode_cookie_reply
from wgrelay.proto.data import decode_data
from wgrelay.proto.envelope import (
    derive_client_keys,
    derive_server_keys,
    open_control,
    parse_control_header,
)
from wgrelay.proto.messages import parse_mapping_probe
from wgrelay.proto.vectors import (
    ANNOUNCEMENT,
    CONTROL_VECTORS,
    COOKIE,
    INFO,
    NONCE,
    OTHER_PEER,
    PEER_PRIVATE,
    RELAY,
    SESSION_ID,
    TIMESTAMP_US,
    all_vectors,
    render,
)
from wgrelay.proto.wgmac import is_handshake, mac1_key, verify_mac1

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def doc_vectors() -> dict[str, str]:
    text = DOC.read_text()
    m = re.search(r"<!-- BEGIN VECTORS -->\s*```\n(.*?)```\s*<!-- END VECTORS -->", text, re.S)
    assert m, "PROTOCOL.md has no vector block"
    return dict(line.split(": ", 1) for line in m.group(1).strip().splitlines())


def test_document_matches_code() -> None:
    expected = dict(line.split(": ", 1) for line in render().splitlines())
    assert doc_vectors() == expected, "regenerate with python -m wgrelay.proto.vectors"


@pytest.mark.parametrize(("name", "body", "from_relay"), CONTROL_VECTORS)
def test_control_vector_decodes_to_its_value(name: str, body: object, from_relay: bool) -> None:
    raw = bytes.fromhex(doc_vectors()[name])
    hdr = parse_control_header(raw)
    peer_pub = PEER_PRIVATE.public_key().raw
    if from_relay:
        keys = derive_client_keys(peer_pub, PEER_PRIVATE.raw, RELAY.x25519_public)
    else:
        keys = derive_server_keys(RELAY.x25519_public, RELAY.x25519_private, peer_pub)
    ts, got = open_control(raw, hdr, keys)
    assert ts == TIMESTAMP_US
    assert got == body
    assert hdr.nonce == NONCE


def test_other_vectors_decode() -> None:
    vec = {k: bytes.fromhex(v) for k, v in doc_vectors().items() if k in all_vectors()}
    frame = decode_data(vec["data"])
    assert frame.session_id == SESSION_ID
    assert len(frame.payload) == 16
    assert parse_control_header(vec["register_with_cookie"]).cookie == COOKIE
    reply = decode_cookie_reply(vec["cookie_reply"])
    assert (reply.echo, reply.cookie) == (NONCE[:8], COOKIE)
    ann = decode_announcement(vec["announcement"])
    assert ann.info == INFO
    assert vec["announcement"] == ANNOUNCEMENT
    assert parse_mapping_probe(vec.pop("mapping_probe")) == SESSION_ID  # not a datagram of ours
    latch = vec.pop("latch_initiation")  # WireGuard's, not ours: the relay checks it
    assert is_handshake(latch)
    assert verify_mac1(mac1_key(OTHER_PEER.raw), latch)
    assert not verify_mac1(mac1_key(PEER_PRIVATE.public_key().raw), latch)
    assert doc_vectors()["latch_mac1_key"] == mac1_key(OTHER_PEER.raw).hex()
    for raw in vec.values():
        parse_datagram(raw)
