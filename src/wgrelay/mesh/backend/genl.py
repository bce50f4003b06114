"""Generic netlink, just enough of it: messages, attributes, a socket, family ids.

The netlink backend (``netlink.py``) speaks the kernel's generic netlink family
"wireguard". This module holds what is not WireGuard-specific, so the codec can
be read (and tested) apart from the socket. Byte layouts, all in host byte
order except where noted (linux/netlink.h, linux/genetlink.h)::

    nlmsghdr  (16)  u32 len (header included) | u16 type | u16 flags | u32 seq | u32 pid
    genlmsghdr (4)  u8 cmd | u8 version | u16 reserved
    nlattr     (4)  u16 len (header included, padding not) | u16 type
                    then the payload, padded with zeros to a multiple of 4
    nlmsgerr        s32 error (0 = ACK, -errno) | the request's nlmsghdr ...

The top two bits of an attribute's type are flags (``NLA_F_NESTED``,
``NLA_F_NET_BYTEORDER``); the kernel sets ``NLA_F_NESTED`` on the nests it
writes, so decoders mask them off.

A dump (``NLM_F_DUMP``) is answered by messages flagged ``NLM_F_MULTI`` and
ends with ``NLMSG_DONE``; a request with ``NLM_F_ACK`` ends with an
``NLMSG_ERROR`` whose error is 0. ``NLM_F_DUMP_INTR`` on a dump part means the
object changed while it was dumped: the caller asks again.

``NetlinkChannel`` is the seam: ``GenlSocket`` is the real one
(``AF_NETLINK``/``NETLINK_GENERIC``), tests pass an in-memory twin.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wgrelay.errors import BackendError

NETLINK_GENERIC = 16
"""linux/netlink.h; Python's socket module does not name it."""

# nlmsghdr.type values below 0x10 are control messages (linux/netlink.h)
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
GENL_ID_CTRL = 0x10
"""The controller family, the only generic family with a fixed id."""

# nlmsghdr.flags
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# controller (linux/genetlink.h)
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1  # u16
CTRL_ATTR_FAMILY_NAME = 2  # NUL-terminated string
CTRL_VERSION = 2

NLMSGHDR = struct.Struct("=IHHII")
GENLMSGHDR = struct.Struct("=BBH")
NLATTR = struct.Struct("=HH")
NLMSGERR = struct.Struct("=i")

RECV_BYTES = 1 << 20
"""One recv returns whole messages; the kernel's dump parts fit in a page or
two, so this is room, not a limit we expect to meet."""
DEFAULT_TIMEOUT_S = 5.0


def _pad4(n: int) -> int:
    return (n + 3) & ~3


# ------------------------------------------------------------------ attributes


def encode_attr(attr_type: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = NLATTR.size + len(payload)
    if length > 0xFFFF:
        raise BackendError(f"netlink attribute {attr_type} too long ({length} bytes)")
    return NLATTR.pack(length, attr_type) + payload + bytes(_pad4(length) - length)


def encode_nested(attr_type: int, attrs: Iterable[bytes]) -> bytes:
    """A nest of already encoded attributes, flagged NLA_F_NESTED as the kernel does."""
    return encode_attr(attr_type | NLA_F_NESTED, b"".join(attrs))


def encode_u8(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, struct.pack("=B", value))


def encode_u16(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, struct.pack("=H", value))


def encode_u32(attr_type: int, value: int) -> bytes:
    return encode_attr(attr_type, struct.pack("=I", value))


def encode_str(attr_type: int, value: str) -> bytes:
    return encode_attr(attr_type, value.encode("utf-8", "surrogateescape") + b"\0")


def decode_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without flag bits, payload) for every attribute in ``data``.

    Raises ``BackendError`` for a length that runs past the buffer or is
    shorter than the attribute header: garbage, never a crash.
    """
    offset = 0
    while offset + NLATTR.size <= len(data):
        length, attr_type = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise BackendError(f"netlink: bad attribute length {length} at offset {offset}")
        yield attr_type & NLA_TYPE_MASK, data[offset + NLATTR.size : offset + length]
        offset += _pad4(length)
    if offset < len(data) and any(data[offset:]):
        raise BackendError(f"netlink: {len(data) - offset} stray bytes after the attributes")


def attr_dict(data: bytes) -> dict[int, bytes]:
    """Attributes by type; a repeated type keeps the last (the kernel repeats none
    of those we read as scalars)."""
    return dict(decode_attrs(data))


def decode_uint(payload: bytes, size: int, what: str) -> int:
    if len(payload) != size:
        raise BackendError(f"netlink: {what} is {len(payload)} bytes, expected {size}")
    return int.from_bytes(payload, sys.byteorder)


# ------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    msg_type: int
    flags: int
    seq: int
    payload: bytes


def encode_message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def encode_genl(family: int, cmd: int, version: int, flags: int, seq: int, attrs: bytes) -> bytes:
    """A generic netlink request: nlmsghdr, genlmsghdr, attributes."""
    return encode_message(family, flags, seq, GENLMSGHDR.pack(cmd, version, 0) + attrs)


def decode_messages(data: bytes) -> list[NetlinkMessage]:
    """Split one datagram into its netlink messages."""
    out = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise BackendError(f"netlink: bad message length {length}")
        out.append(
            NetlinkMessage(msg_type, flags, seq, data[offset + NLMSGHDR.size : offset + length])
        )
        offset += _pad4(length)
    return out


def genl_attrs(message: NetlinkMessage) -> bytes:
    """The attributes of a generic netlink message (after its genlmsghdr)."""
    if len(message.payload) < GENLMSGHDR.size:
        raise BackendError("netlink: generic message shorter than its header")
    return message.payload[GENLMSGHDR.size :]


class NetlinkError(BackendError):
    """The kernel answered a request with ``NLMSG_ERROR`` and a non-zero errno."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


# ------------------------------------------------------------------ channel


class NetlinkChannel(Protocol):
    """One generic netlink conversation: send a request, receive datagrams."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class GenlSocket:
    """``NetlinkChannel`` over a real ``AF_NETLINK``/``NETLINK_GENERIC`` socket.

    One deadline covers the whole conversation, so a kernel that trickles
    dump parts cannot stretch a call past ``timeout_s``.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            self._sock.bind((0, 0))
        except OSError as e:
            raise BackendError(f"netlink: cannot open a generic netlink socket: {e}") from None
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s

    def send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as e:
            raise BackendError(f"netlink: send failed: {e.strerror or e}") from None

    def recv(self) -> bytes:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            return self._sock.recv(RECV_BYTES)
        except TimeoutError:
            raise BackendError(f"netlink: no answer within {self._timeout_s:g}s") from None
        except OSError as e:
            raise BackendError(f"netlink: recv failed: {e.strerror or e}") from None

    def close(self) -> None:
        self._sock.close()


def transact(channel: NetlinkChannel, request: bytes, seq: int, what: str) -> list[NetlinkMessage]:
    """Send ``request``; collect its answer: the data messages of a dump (up to
    ``NLMSG_DONE``) or of a single reply, and nothing for a bare ACK.

    An ``NLMSG_ERROR`` with a non-zero errno raises ``NetlinkError``; messages
    of another sequence number (a late answer to an earlier call) are skipped.
    """
    channel.send(request)
    parts: list[NetlinkMessage] = []
    while True:
        for msg in decode_messages(channel.recv()):
            if msg.seq != seq or msg.msg_type == NLMSG_NOOP:
                continue
            if msg.msg_type == NLMSG_DONE:
                return parts
            if msg.msg_type == NLMSG_ERROR:
                if len(msg.payload) < NLMSGERR.size:
                    raise BackendError(f"{what}: truncated netlink error message")
                (err,) = NLMSGERR.unpack_from(msg.payload)
                if err:
                    raise NetlinkError(f"{what}: {os.strerror(-err)} (errno {-err})", -err)
                return parts
            parts.append(msg)
            if not msg.flags & NLM_F_MULTI:
                return parts


# ------------------------------------------------------------------ families


def encode_get_family(name: str, seq: int) -> bytes:
    return encode_genl(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
        NLM_F_REQUEST,
        seq,
        encode_str(CTRL_ATTR_FAMILY_NAME, name),
    )


def parse_family_id(messages: list[NetlinkMessage], name: str) -> int:
    for msg in messages:
        attrs = attr_dict(genl_attrs(msg))
        if CTRL_ATTR_FAMILY_ID in attrs:
            return decode_uint(attrs[CTRL_ATTR_FAMILY_ID], 2, "family id")
    raise BackendError(f"netlink: the controller's answer for {name!r} has no family id")


class FamilyNotFound(BackendError):
    """The kernel has no generic netlink family of that name (module not loaded)."""


def resolve_family(channel: NetlinkChannel, name: str, seq: int) -> int:
    """The id of generic netlink family ``name``; ``FamilyNotFound`` if absent."""
    try:
        reply = transact(channel, encode_get_family(name, seq), seq, f"netlink family {name!r}")
    except NetlinkError as e:
        if e.errno == errno.ENOENT:
            raise FamilyNotFound(
                f"the kernel has no generic netlink family {name!r}"
                + (" (no WireGuard kernel module loaded)" if name == "wireguard" else "")
            ) from None
        raise
    return parse_family_id(reply, name)
