"""Bounded reading and writing of wire fields (big endian, network order).

Every ``pull_*`` checks the remaining length first and raises ``Truncated``
(a ``RemoteProtocolError``) instead of reading past the end, so decoders built on
it cannot over-read whatever bytes arrive.
"""

from __future__ import annotations

import ipaddress
import struct

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, Malformed, Truncated

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Buffer:
    """Reads fields off a received datagram, never past its end."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise Malformed(f"{self._end - self._pos} trailing bytes", "trailing_bytes")

    def _take(self, n: int) -> int:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise Truncated(f"need {n} bytes, {self._end - pos} left")
        self._pos = pos + n
        return pos

    def pull_u8(self) -> int:
        return self._data[self._take(1)]

    def pull_u16(self) -> int:
        return int(_U16.unpack_from(self._data, self._take(2))[0])

    def pull_u32(self) -> int:
        return int(_U32.unpack_from(self._data, self._take(4))[0])

    def pull_u64(self) -> int:
        return int(_U64.unpack_from(self._data, self._take(8))[0])

    def pull_bytes(self, n: int) -> bytes:
        pos = self._take(n)
        return bytes(self._data[pos : pos + n])

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self._end - self._pos)

    def pull_str8(self, max_len: int) -> str:
        n = self.pull_u8()
        if n > max_len:
            raise Malformed(f"string of {n} bytes exceeds {max_len}")
        raw = self.pull_bytes(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("string is not UTF-8") from None

    def pull_endpoint(self) -> Endpoint:
        family = self.pull_u8()
        if family == 4:
            host = str(ipaddress.IPv4Address(self.pull_bytes(4)))
        elif family == 6:
            host = str(ipaddress.IPv6Address(self.pull_bytes(16)))
        else:
            raise Malformed(f"unknown address family {family}")
        return host, self.pull_u16()


class Writer:
    """Builds an outgoing message; refuses values that do not fit their field."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts = bytearray()

    def push_u8(self, v: int) -> None:
        if not 0 <= v <= 0xFF:
            raise LocalProtocolError(f"u8 out of range: {v}")
        self._parts.append(v)

    def push_u16(self, v: int) -> None:
        if not 0 <= v <= 0xFFFF:
            raise LocalProtocolError(f"u16 out of range: {v}")
        self._parts += _U16.pack(v)

    def push_u32(self, v: int) -> None:
        if not 0 <= v <= 0xFFFFFFFF:
            raise LocalProtocolError(f"u32 out of range: {v}")
        self._parts += _U32.pack(v)

    def push_u64(self, v: int) -> None:
        if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
            raise LocalProtocolError(f"u64 out of range: {v}")
        self._parts += _U64.pack(v)

    def push_bytes(self, b: bytes, length: int | None = None) -> None:
        if length is not None and len(b) != length:
            raise LocalProtocolError(f"expected {length} bytes, got {len(b)}")
        self._parts += b

    def push_str8(self, s: str, max_len: int) -> None:
        raw = s.encode("utf-8")
        if len(raw) > max_len:
            raise LocalProtocolError(f"string of {len(raw)} bytes exceeds {max_len}")
        self.push_u8(len(raw))
        self._parts += raw

    def push_endpoint(self, ep: Endpoint) -> None:
        host, port = ep
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise LocalProtocolError(f"not an IP address: {host!r}") from None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        self.push_u8(ip.version)
        self._parts += ip.packed
        self.push_u16(port)

    def getvalue(self) -> bytes:
        return bytes(self._parts)
