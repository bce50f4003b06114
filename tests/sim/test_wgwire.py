"""WireGuard message layouts and mac1, checked against a real handshake."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sim.simhelpers import key
from wgrelay.errors import RemoteProtocolError
from wgrelay.sim.wgwire import (
    INITIATION_LEN,
    KEEPALIVE_LEN,
    RESPONSE_LEN,
    compute_mac1,
    decode_initiation,
    decode_response,
    decode_transport,
    encode_initiation,
    encode_response,
    encode_transport,
    mac1_key,
    tai64n,
    verify_mac1,
)

# The first handshake of Wireshark's test capture test/captures/wireguard-ping-tcp.pcap,
# made by a real WireGuard, and the two peers' static public keys from Wireshark's
# test/suite_decryption.py (key_Spub_i, key_Spub_r). mac1 is the only field of
# these messages computable from public keys alone.
REAL_INITIATION = bytes.fromhex(
    "01000000d837d0305fcec7c8e5c8e2e3f7989eef60c228d82329d602b6b1e2bb9d068f89"
    "cf9d4d4532780f6d27264f7b98701fdc27a4ec00aeb6becdbef2332f1b4084cadb938239"
    "35c012ae255e7b25eff13940c321fa6bd66a2a87b061db1430173e937f569349de2856dc"
    "5f2616763eeeafc0533b01dd965e7ec76976e28f683d6712"
    "00000000000000000000000000000000"
)
REAL_RESPONSE = bytes.fromhex(
    "0200000006f47dabd837d030b18d5550bd4042a37a46823ac08db1ec66839bc0ca2d64bc"
    "15cd80232b66232faec24af8918de1060ff5c98e865d5f35f272214c5260110dc4c61e32"
    "cdd85421"
    "00000000000000000000000000000000"
)
INITIATOR_PUBLIC = base64.b64decode("Igge9KzRytKNwrgkzDE/8hrLu6Ly0OqVdvOPWhA5KR4=")
RESPONDER_PUBLIC = base64.b64decode("YDCttCs9e1J52/g9vEnwJJa+2x6RqaayAYMpSVQfGEY=")


def test_mac1_of_a_real_handshake() -> None:
    assert len(REAL_INITIATION) == INITIATION_LEN
    assert len(REAL_RESPONSE) == RESPONSE_LEN
    # An initiation's mac1 is keyed by the responder's public key...
    assert compute_mac1(mac1_key(RESPONDER_PUBLIC), REAL_INITIATION[:116]) == bytes.fromhex(
        "533b01dd965e7ec76976e28f683d6712"
    )
    assert verify_mac1(mac1_key(RESPONDER_PUBLIC), REAL_INITIATION)
    assert not verify_mac1(mac1_key(INITIATOR_PUBLIC), REAL_INITIATION)
    # ...a response's by the initiator's.
    assert compute_mac1(mac1_key(INITIATOR_PUBLIC), REAL_RESPONSE[:60]) == bytes.fromhex(
        "f272214c5260110dc4c61e32cdd85421"
    )
    assert verify_mac1(mac1_key(INITIATOR_PUBLIC), REAL_RESPONSE)
    tampered = bytearray(REAL_INITIATION)
    tampered[5] ^= 0x20
    assert not verify_mac1(mac1_key(RESPONDER_PUBLIC), bytes(tampered))
    assert not verify_mac1(mac1_key(RESPONDER_PUBLIC), b"short")


def test_real_messages_decode() -> None:
    init = decode_initiation(REAL_INITIATION)
    assert init.sender == 0x30D037D8
    response = decode_response(REAL_RESPONSE)
    assert (response.sender, response.receiver) == (0xAB7DF406, init.sender)


def test_initiation_layout() -> None:
    initiator, responder = key(1).public_key().raw, key(2).public_key().raw
    ts = tai64n(1_700_000_000.25)
    msg = encode_initiation(0x01020304, b"E" * 32, initiator, ts, mac1_key(responder))
    assert len(msg) == INITIATION_LEN
    assert msg[:8] == b"\x01\x00\x00\x00\x04\x03\x02\x01"
    assert msg[8:40] == b"E" * 32
    assert msg[40:72] == initiator  # the sim-only shortcut: the static key in the clear
    assert msg[72:88] == bytes(16)
    assert msg[88:100] == ts
    assert msg[132:] == bytes(16)  # mac2: no cookie
    assert verify_mac1(mac1_key(responder), msg)
    decoded = decode_initiation(msg)
    assert (decoded.sender, decoded.static_public, decoded.timestamp) == (0x01020304, initiator, ts)


def test_response_layout() -> None:
    initiator = key(1).public_key().raw
    msg = encode_response(7, 0x01020304, b"R" * 32, mac1_key(initiator))
    assert len(msg) == RESPONSE_LEN
    assert msg[:12] == b"\x02\x00\x00\x00\x07\x00\x00\x00\x04\x03\x02\x01"
    assert verify_mac1(mac1_key(initiator), msg)
    assert decode_response(msg).ephemeral == b"R" * 32


def test_transport_and_keepalive() -> None:
    keepalive = encode_transport(9, 3, b"")
    assert len(keepalive) == KEEPALIVE_LEN == 32
    assert keepalive[:16] == struct.pack("<IIQ", 4, 9, 3)
    assert decode_transport(keepalive) == (9, 3, b"")
    assert decode_transport(encode_transport(1, 2**63, b"x" * 48)) == (1, 2**63, b"x" * 48)


def test_tai64n() -> None:
    assert tai64n(1_700_000_000.5) == struct.pack(">QI", 2**62 + 1_700_000_000, 500_000_000)
    assert tai64n(10.0) < tai64n(10.000001) < tai64n(11.0)


@pytest.mark.parametrize("decode", [decode_initiation, decode_response, decode_transport])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_protocol_errors(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data)
