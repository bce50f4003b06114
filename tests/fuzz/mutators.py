"""Mutators that know the layout (docs/PROTOCOL.md), in two stages.

Before sealing, on a ``ControlDraft``: any field of the body set to an edge
of its range (length bytes to 0, the limit, the limit + 1 and 255; an address
family to 0, 5 or the wrong one; a u64 to 2^64 - 1; a flag bit on or off; an
RTT to 0, 0xFFFF "unknown" or a jump; a session id to a live or pending one;
a key to a registered peer, the sender itself or the relay),
bodies cut or grown at field boundaries or swapped for another type's, the
timestamp moved (stale, future, replayed, 0, max), the type, version and flags
bytes changed, cookies added, dropped or swapped, the sender swapped with or
without its keys, nonces reused. The draft is then sealed with a valid key,
so the receiver decrypts and its decoders and handlers see the garbage.

After sealing, on bytes: bits flipped in the header, cookie, ciphertext or
tag; type, version and flags bytes overwritten; cuts and extensions at field
boundaries and to the size limits; two datagrams spliced at a boundary.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from tests.fuzz.layout import (
    CONTROL_BOUNDARIES,
    COOKIE_END,
    DATA_BOUNDARIES,
    HEADER_LEN,
    LOCATION_HOME,
    LOCATION_SIGNED,
    ControlDraft,
    DataDraft,
    Draft,
    Field,
    RawDraft,
    announcement_fields,
    body_fields,
    boundaries,
    location_fields,
)
from wgrelay.keys import RelayIdentity
from wgrelay.proto.constants import (
    CONTROL_TYPES,
    MAX_CONTROL_SIZE,
    RTT_UNKNOWN,
    SERVER_TO_CLIENT,
    SIGNATURE_LEN,
    MsgType,
)
from wgrelay.proto.data import MAX_DATA_FRAME
from wgrelay.proto.envelope import FLAG_COOKIE, FLAG_FROM_SERVER

CONTROL_TYPE_BYTES = sorted(int(t) for t in CONTROL_TYPES)
OTHER_TYPE_BYTES = [0, 1, 2, 3, 4, 5, 0x10, 0x1F, 0x2E, 0x2F, 0x30, 0x31, 0x32, 0x33, 0x3F]
OTHER_TYPE_BYTES += [0x4A, 0x4F, 0x50, 0x7F, 0xFF]


class Context(Protocol):
    """What a mutator may ask the world for (live values make deep paths)."""

    def now_us(self) -> int: ...

    def some_key(self) -> bytes: ...

    def some_sid(self) -> bytes: ...

    def some_party(self) -> tuple[bytes, bytes | None]:
        """(sender key, the AEAD key it seals with towards the receiver)."""
        ...

    def cookie_for(self, sender: bytes) -> bytes | None: ...

    def old_nonce(self) -> bytes | None: ...

    def newest_ts(self, sender: bytes) -> int | None: ...

    def signer(self, key: bytes) -> RelayIdentity | None: ...

    def some_body(self, msg_type: int) -> bytes: ...


def _u(rng: random.Random, size: int, old: int) -> int:
    top = (1 << (8 * size)) - 1
    edges = [0, 1, top, top - 1, top >> 1, (top >> 1) + 1, (old + 1) & top, (old - 1) & top]
    return rng.choice([*edges, rng.randrange(top + 1)])


def field_value(rng: random.Random, ctx: Context, f: Field, buf: bytes) -> bytes:
    """An interesting value for one field (same size unless the kind says so)."""
    old = int.from_bytes(buf[f.off : f.off + f.size], "big") if f.size <= 8 else 0
    k = f.kind
    if k in ("u8", "flags", "pct", "bool", "count"):
        bit = old ^ (1 << rng.randrange(8))  # one flag on or off (a standby, an alternate)
        v = rng.choice(
            [0, 1, 2, 3, 100, 101, 0x7F, 0x80, 0xFE, 0xFF, old ^ 1, bit, rng.randrange(256)]
        )
    elif k == "enum":
        v = rng.choice([0, f.limit - 1, f.limit, f.limit + 1, 0xFF, rng.randrange(256)]) & 0xFF
    elif k == "type":
        v = rng.choice([*CONTROL_TYPE_BYTES, *OTHER_TYPE_BYTES])
    elif k == "family":
        v = rng.choice([0, 4, 6, 5, 46, 255])
    elif k == "port":
        v = rng.choice([0, 1, 51820, 65535])
    elif k == "ms":
        now = ctx.now_us() // 1000
        v = rng.choice(
            [
                now,
                now + 1,
                old,
                old + 1,
                old - 1,
                now + 121_000,  # past the clock skew allowed
                now - 600_000,  # expired with a 600 s ttl
                now - 120_001,
                0,
                2**64 - 1,
                _u(rng, 8, old),
            ]
        )
    elif k == "hash":
        return rng.choice([bytes(f.size), b"\xff" * f.size, rng.randbytes(f.size)])
    elif k == "u64":
        now = ctx.now_us()
        v = rng.choice(
            [
                _u(rng, 8, old),
                now,
                now + 121_000_000,
                now - 121_000_000,
                2**64 - 1,
                2**64 - 1024,
                2**63,
            ]
        )
    elif k == "rtt":  # a peer's round trip: unknown, none, the edges, a jump
        v = rng.choice(
            [
                RTT_UNKNOWN,
                RTT_UNKNOWN - 1,
                0,
                1,
                9,
                10,
                23,
                400,
                old,
                old + 1,
                old * 2,
                _u(rng, 2, old),
            ]
        )
    elif k in ("u16", "u32", "annlen"):
        v = _u(rng, f.size, old)
    elif k == "strlen":
        remaining = len(buf) - f.off - 1
        v = rng.choice([0, 1, f.limit, f.limit + 1, 255, remaining, remaining + 1]) & 0xFF
    elif k == "str":
        return _bad_text(rng, f.size)
    elif k == "key":
        return ctx.some_key()
    elif k == "sid":
        return ctx.some_sid()
    elif k == "ip":
        return rng.choice([bytes(f.size), b"\xff" * f.size, rng.randbytes(f.size)])
    else:  # ann, loc, sig: flip a bit somewhere inside
        b = bytearray(buf[f.off : f.off + f.size])
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    return (v & ((1 << (8 * f.size)) - 1)).to_bytes(f.size, "big")


def _bad_text(rng: random.Random, n: int) -> bytes:
    if n == 0:
        return b""
    choices = [b"\xff" * n, (b"\xc3" * n)[:n], b"\x00" * n, ("é" * n).encode()[:n]]
    return rng.choice(choices)


def _flip(rng: random.Random, data: bytes, lo: int, hi: int) -> bytes:
    hi = min(hi, len(data))
    if lo >= hi:
        return data
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(b)


class Mutator:
    def __init__(self, rng: random.Random, ctx: Context) -> None:
        self.rng = rng
        self.ctx = ctx
        self._pre: list[tuple[str, Callable[[ControlDraft], None]]] = [
            ("body_field", self.body_field),
            ("body_field", self.body_field),
            ("body_field", self.body_field),
            ("body_cut", self.body_cut),
            ("body_grow", self.body_grow),
            ("body_bits", self.body_bits),
            ("body_swap", self.body_swap),
            ("body_field_dup", self.body_field_dup),
            ("ts", self.timestamp),
            ("type", self.type_byte),
            ("version", self.version_byte),
            ("flags", self.flags_byte),
            ("cookie", self.cookie),
            ("sender", self.sender),
            ("nonce", self.nonce),
            ("forge", self.forge),
        ]

    # ------------------------------------------------------------ entry point

    def mutate(self, draft: Draft, partner: bytes | None, rounds: int) -> tuple[bytes, list[str]]:
        """Mutate ``draft`` ``rounds`` times (0: build it as is); bytes and what was done."""
        rng = self.rng
        names: list[str] = []
        wire_rounds = 0
        for _ in range(rounds):
            if isinstance(draft, ControlDraft) and rng.random() < 0.75:
                name, fn = rng.choice(self._pre)
                fn(draft)
                names.append(name)
            elif isinstance(draft, DataDraft) and rng.random() < 0.7:
                names.append(self.data(draft))
            elif isinstance(draft, RawDraft) and draft.data[:1] == b"\x30" and rng.random() < 0.6:
                draft.data = self.announcement(draft.data)
                names.append("announcement")
            elif isinstance(draft, RawDraft) and draft.data[:1] == b"\x32" and rng.random() < 0.6:
                draft.data = self.location(draft.data)
                names.append("location")
            else:
                wire_rounds += 1
        data = draft.build()
        for _ in range(wire_rounds):
            data, name = self.wire(data, partner)
            names.append(name)
        return data, names

    # ------------------------------------------------------------ before sealing

    def body_field(self, d: ControlDraft) -> None:
        fields = body_fields(d.msg_type, d.body)
        if not fields:
            self.body_grow(d)
            return
        f = self.rng.choice(fields)
        if f.kind == "ann" and self.rng.random() < 0.8:
            # an announcement inside a response or gossip: mutated along its
            # own layout (and signed again), its u16 length kept true so the
            # body parses
            ann = self.announcement(d.body[f.off : f.off + f.size])
            head = d.body[: f.off - 2] + len(ann).to_bytes(2, "big")
            d.body = head + ann + d.body[f.off + f.size :]
            return
        if f.kind == "loc" and self.rng.random() < 0.8:
            # a location record (fixed size: a changed one shifts what follows)
            rec = self.location(d.body[f.off : f.off + f.size])
            d.body = d.body[: f.off] + rec + d.body[f.off + f.size :]
            return
        value = field_value(self.rng, self.ctx, f, d.body)
        d.body = d.body[: f.off] + value + d.body[f.off + f.size :]

    def body_cut(self, d: ControlDraft) -> None:
        cuts = boundaries(body_fields(d.msg_type, d.body), len(d.body))
        if self.rng.random() < 0.8 and len(cuts) > 1:
            d.body = d.body[: self.rng.choice(cuts[:-1])]
        elif d.body:
            d.body = d.body[: self.rng.randrange(len(d.body))]

    def body_grow(self, d: ControlDraft) -> None:
        rng = self.rng
        extra = rng.choice(
            [b"\x00", rng.randbytes(rng.randint(1, 8)), self.ctx.some_key(), self.ctx.some_sid()]
        )
        if rng.random() < 0.15:
            # to exactly the control size limit, or one past it
            overhead = len(d.header()) + 8 + 16
            target = MAX_CONTROL_SIZE - overhead + rng.choice([0, 1])
            extra = rng.randbytes(max(0, target - len(d.body)))
        d.body += extra

    def body_bits(self, d: ControlDraft) -> None:
        d.body = _flip(self.rng, d.body, 0, len(d.body))

    def body_swap(self, d: ControlDraft) -> None:
        """Another type's body under this type (or this body under another type)."""
        other = self.rng.choice(CONTROL_TYPE_BYTES)
        if self.rng.random() < 0.5:
            d.body = self.ctx.some_body(other)
        else:
            d.msg_type = other
            d.flags = (d.flags & ~FLAG_FROM_SERVER) | (
                FLAG_FROM_SERVER if other in SERVER_TO_CLIENT else 0
            )

    def body_field_dup(self, d: ControlDraft) -> None:
        fields = body_fields(d.msg_type, d.body)
        if not fields:
            return
        f = self.rng.choice(fields)
        chunk = d.body[f.off : f.off + f.size]
        if self.rng.random() < 0.5:
            d.body = d.body[: f.off] + chunk + d.body[f.off :]
        else:
            d.body = d.body[: f.off] + d.body[f.off + f.size :]

    def timestamp(self, d: ControlDraft) -> None:
        rng = self.rng
        now = self.ctx.now_us()
        newest = self.ctx.newest_ts(d.sender)
        picks = [now, now + 119_000_000, now - 119_000_000, now + 121_000_000]
        picks += [now - 121_000_000, 0, 1, 2**64 - 1, 2**63, d.ts, d.ts - 1]
        if newest is not None:
            picks += [newest, newest, newest - 1, newest + 1]
        d.ts = rng.choice(picks) & ((1 << 64) - 1)

    def type_byte(self, d: ControlDraft) -> None:
        d.msg_type = self.rng.choice([*CONTROL_TYPE_BYTES, *CONTROL_TYPE_BYTES, *OTHER_TYPE_BYTES])

    def version_byte(self, d: ControlDraft) -> None:
        d.version = self.rng.choice([0, 2, 0x7F, 0xFF])

    def flags_byte(self, d: ControlDraft) -> None:
        rng = self.rng
        d.flags = rng.choice(
            [d.flags ^ FLAG_FROM_SERVER, d.flags ^ FLAG_COOKIE, d.flags | 0x04, 0x80, 0xFF, 0]
        )

    def cookie(self, d: ControlDraft) -> None:
        rng = self.rng
        valid = self.ctx.cookie_for(d.sender)
        choice = rng.randrange(5)
        if choice == 0 and valid is not None:
            d.cookie, d.flags = valid, d.flags | FLAG_COOKIE
        elif choice == 1:
            d.cookie, d.flags = rng.randbytes(16), d.flags | FLAG_COOKIE
        elif choice == 2:
            d.cookie = None  # flag kept if set: the ciphertext is read as the cookie
        elif choice == 3:
            d.cookie, d.flags = None, d.flags & ~FLAG_COOKIE
        else:
            d.flags &= ~FLAG_COOKIE  # cookie kept: read as ciphertext
            if d.cookie is None:
                d.cookie = valid or rng.randbytes(16)

    def sender(self, d: ControlDraft) -> None:
        sender, key = self.ctx.some_party()
        if self.rng.random() < 0.5:
            d.sender, d.key = sender, key  # speak as someone else, properly
        else:
            d.sender = sender  # someone else's name, our keys

    def nonce(self, d: ControlDraft) -> None:
        old = self.ctx.old_nonce()
        d.nonce = old if old is not None and self.rng.random() < 0.7 else bytes(24)

    def forge(self, d: ControlDraft) -> None:
        d.key = None

    # ------------------------------------------------------------ data frames

    def data(self, d: DataDraft) -> str:
        rng = self.rng
        what = rng.randrange(5)
        if what == 0:
            d.sid = self.ctx.some_sid()
            return "data_sid"
        if what == 1:
            d.flags = rng.choice([0, 1, 0x80, 0xFF])
            return "data_flags"
        if what == 2:
            first = rng.choice([0, 1, 2, 3, 4, 5, 0x10, 0xFF])
            d.payload = bytes((first,)) + d.payload[1:]
            return "data_wg_type"
        size = rng.choice([0, 1, 31, 32, 33, 148, 1452, MAX_DATA_FRAME - 10, MAX_DATA_FRAME - 9])
        body = d.payload[:size]
        d.payload = body + rng.randbytes(max(0, size - len(body)))
        return "data_size"

    # ------------------------------------------------------------ announcements

    def announcement(self, data: bytes) -> bytes:
        rng = self.rng
        fields = announcement_fields(data)
        if not fields:
            return data
        r = rng.random()
        if r < 0.1:  # cut at a field boundary, or below the smallest size
            return data[: rng.choice([*boundaries(fields, len(data)), 1, 97])]
        if r < 0.15:  # past the control size limit
            return data + rng.randbytes(max(0, MAX_CONTROL_SIZE + 1 - len(data)))
        f = rng.choice(fields)
        data = data[: f.off] + field_value(self.rng, self.ctx, f, data) + data[f.off + f.size :]
        if self.rng.random() < 0.7 and len(data) > 64 + 34:
            # sign the garbage with the key it names, if we hold it
            signer = self.ctx.signer(data[2:34])
            if signer is not None:
                data = data[:-64] + signer.sign(data[:-64])
        return data

    def location(self, data: bytes) -> bytes:
        """A LOCATION record mutated along its layout; mostly signed again by
        the home relay it names (if we hold that key), so the holder's
        checks after the signature see the change."""
        rng = self.rng
        fields = location_fields(data)
        if not fields:
            return data
        r = rng.random()
        if r < 0.1:
            return data[: rng.choice([*boundaries(fields, len(data)), 1])]
        if r < 0.15:
            return data + rng.randbytes(rng.choice([1, 16]))
        f = rng.choice(fields)
        data = data[: f.off] + field_value(rng, self.ctx, f, data) + data[f.off + f.size :]
        if rng.random() < 0.8 and len(data) > LOCATION_SIGNED:
            signer = self.ctx.signer(data[LOCATION_HOME])
            if signer is not None:
                body = data[:LOCATION_SIGNED]
                data = body + signer.sign(body) + data[LOCATION_SIGNED + SIGNATURE_LEN :]
        return data

    # ------------------------------------------------------------ after sealing

    def wire(self, data: bytes, partner: bytes | None) -> tuple[bytes, str]:
        rng = self.rng
        n = len(data)
        is_data = data[:1] == bytes((MsgType.DATA,))
        cookie = n > 2 and bool(data[2] & FLAG_COOKIE) and not is_data
        ct_start = COOKIE_END if cookie else HEADER_LEN
        what = rng.randrange(10)
        if what == 0:
            return _flip(rng, data, 0, HEADER_LEN), "flip_header"
        if what == 1:
            return _flip(rng, data, ct_start, max(ct_start, n - 16)), "flip_ciphertext"
        if what == 2:
            return _flip(rng, data, max(0, n - 16), n), "flip_tag"
        if what == 3 and cookie:
            return _flip(rng, data, HEADER_LEN, COOKIE_END), "flip_cookie"
        if what == 4 and n >= 3:
            i = rng.randrange(3)
            b = bytearray(data)
            b[i] = rng.choice([*CONTROL_TYPE_BYTES, *OTHER_TYPE_BYTES, 0, 2, FLAG_FROM_SERVER])
            return bytes(b), ("set_type", "set_version", "set_flags")[i]
        if what == 5:
            cuts = list(DATA_BOUNDARIES if is_data else CONTROL_BOUNDARIES)
            cuts += [max(0, n - 16), max(0, n - 1)]
            return data[: rng.choice([c for c in cuts if c <= n] or [0])], "cut"
        if what == 6:
            limit = MAX_DATA_FRAME if is_data else MAX_CONTROL_SIZE
            size = rng.choice([n + 1, n + 16, limit, limit + 1])
            return data + rng.randbytes(max(0, size - n)), "extend"
        if what == 7 and partner:
            splits = CONTROL_BOUNDARIES if not is_data else DATA_BOUNDARIES
            at = rng.choice([c for c in splits if c <= n] or [0])
            return data[:at] + partner[at:], "splice"
        if what == 8:
            return data + data, "doubled"
        return _flip(rng, data, 0, n), "flip_any"
