"""The wgrelay wire protocol, sans-I/O: bytes in, typed values out.

Nothing here opens a socket or reads a clock; time and randomness are passed in.
See docs/PROTOCOL.md for the byte layouts and test vectors.
"""

from __future__ import annotations

from wgrelay.errors import Truncated, UnknownType
from wgrelay.proto.announce import Announcement, RelayNodeInfo, decode_announcement
from wgrelay.proto.constants import CONTROL_TYPES, MsgType
from wgrelay.proto.cookie import CookieReply, decode_cookie_reply
from wgrelay.proto.data import RelayPacket, decode_data
from wgrelay.proto.envelope import ControlHeader, parse_control_header
from wgrelay.proto.location import LocationRecord, decode_location

Parsed = RelayPacket | ControlHeader | Announcement | CookieReply | LocationRecord


def parse_datagram(data: bytes) -> Parsed:
    """Classify and structurally check any received datagram (no decryption).

    Raises only ``RemoteProtocolError`` subclasses, whatever the input.
    """
    if not data:
        raise Truncated("empty datagram")
    t = data[0]
    if t == MsgType.DATA:
        return decode_data(data)
    if t in CONTROL_TYPES:
        return parse_control_header(data)
    if t == MsgType.ANNOUNCEMENT:
        return decode_announcement(data)
    if t == MsgType.COOKIE_REPLY:
        return decode_cookie_reply(data)
    if t == MsgType.LOCATION:
        return decode_location(data)
    raise UnknownType(f"unknown message type {t:#04x}")


__all__ = [
    "Announcement",
    "ControlHeader",
    "CookieReply",
    "MsgType",
    "Parsed",
    "RelayNodeInfo",
    "RelayPacket",
    "parse_datagram",
]
