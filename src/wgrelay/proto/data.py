"""The data frame (the seed's ForwardPacket) that carries WireGuard packets.

Layout::

    0  type        u8   DATA (0x10)
    1  flags       u8   0 in version 1; forwarded unchanged
    2  session_id  8B   chosen by the relay, random
    10 payload          one WireGuard packet, untouched

10 bytes of overhead: a default-MTU WireGuard packet (1452 bytes) is relayed as
1462 bytes of UDP payload, which fits a 1500-byte IPv4 path (1490 with headers).

Where the seed's ``RelayHeader`` fields went: ``session_id`` is here;
``dest_peer_id`` is resolved by the relay from the session (the target was named,
authenticated, in the ConnectionRequest); ``timestamp`` lives in the control
envelope (WireGuard already replay-protects its own packets); ``flags`` is here.

The relay forwards the datagram byte for byte to the other end of the session,
so the frame a receiver sees is the frame the sender built.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.errors import LocalProtocolError, Oversize, Truncated, UnknownType
from wgrelay.proto.constants import DATA_HEADER_LEN, MAX_DATA_PAYLOAD, SESSION_ID_LEN, MsgType

DATA_TYPE = int(MsgType.DATA)
MAX_DATA_FRAME = DATA_HEADER_LEN + MAX_DATA_PAYLOAD


@dataclass(frozen=True, slots=True)
class RelayPacket:
    """The seed's RelayPacket: one WireGuard packet and the session it travels in."""

    session_id: bytes
    payload: bytes
    flags: int = 0


def data_header(session_id: bytes, flags: int = 0) -> bytes:
    """The 10 bytes to put in front of every packet of a session."""
    if len(session_id) != SESSION_ID_LEN:
        raise LocalProtocolError("session ids are 8 bytes")
    return bytes((DATA_TYPE, flags)) + session_id


def encode_data(session_id: bytes, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_DATA_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes > {MAX_DATA_PAYLOAD}")
    return data_header(session_id, flags) + payload


def decode_data(data: bytes) -> RelayPacket:
    n = len(data)
    if n < DATA_HEADER_LEN:
        raise Truncated(f"data frame of {n} bytes")
    if data[0] != DATA_TYPE:
        raise UnknownType(f"not a data frame: {data[0]:#04x}")
    if n > MAX_DATA_FRAME:
        raise Oversize(f"data frame of {n} bytes > {MAX_DATA_FRAME}")
    return RelayPacket(
        session_id=bytes(data[2:DATA_HEADER_LEN]),
        payload=bytes(data[DATA_HEADER_LEN:]),
        flags=data[1],
    )
