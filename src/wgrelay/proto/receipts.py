"""Credits on the wire: usage receipts, operator claims, and their messages.

A *receipt* is a peer's signed word that a relay carried so many bytes of
one of its sessions; an *operator claim* is a member's signed word that it
runs a relay, endorsed by that relay. Both are records anyone can check
(relay/ledger.py does, at every relay), so they travel unchanged: from the
agent to the relay that served it, then from relay to relay with the gossip.

Records (integers big endian)::

    RECEIPT record (156 B)
        relay key 32B (Ed25519)     the relay that carried the session
        peer key 32B (X25519)       the signer: the peer it served
        session 8B
        seq u32                     the relay's request number (grows)
        bytes u64                   cumulative, both directions, acknowledged
        time_ms u64                 the signer's clock when it signed
        signature 64B               XEdDSA by the peer over
                                    "wgrelay receipt v1\\0" || the 116 bytes above

    CLAIM record (200 B)
        member key 32B (X25519)     who runs the relay
        relay key 32B (Ed25519)
        issued_ms u64
        member signature 64B        XEdDSA over "wgrelay claim v1\\0" || the 72 bytes above
        relay signature 64B         Ed25519 by the relay over
                                    "wgrelay claim endorsed v1\\0" || the 136 bytes above

Messages (inside the usual envelope)::

    RECEIPT_REQUEST 0x54 relay->agent  session 8B | seq u32 | claimed bytes u64
    RECEIPT         0x55 agent->relay  RECEIPT record
    CREDIT_QUERY    0x56 agent->relay  query_id u32 | member key 32B
    CREDIT_REPORT   0x57 relay->agent  query_id u32 | member key 32B | window_days u16
                                       | earned u64 | used u64 | used_receipts u32
                                       | n u8 | n x (relay key 32B | bytes u64 | receipts u32)
    RECEIPTS        0x4E relay->relay  n u8 | n x RECEIPT record | m u8 | m x CLAIM record
    RECEIPTS_ACK    0x4F relay->relay  stored u8 | refused u8

A CREDIT_REPORT names at most ``MAX_REPORT_RELAYS`` relays (the most
earning first); ``earned`` is the total over all of them, so the balance
(``earned - used``) is exact even when the list is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from wgrelay import xeddsa
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, verify_signature
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import KEY_LEN, SESSION_ID_LEN, SIGNATURE_LEN, MsgType

RECEIPT_LEN = 156
CLAIM_LEN = 200
RECEIPT_DOMAIN = b"wgrelay receipt v1\x00"
CLAIM_DOMAIN = b"wgrelay claim v1\x00"
ENDORSE_DOMAIN = b"wgrelay claim endorsed v1\x00"
MAX_RECEIPTS_PER_MESSAGE = 6
MAX_CLAIMS_PER_MESSAGE = 5
RECEIPTS_ROOM = 1101 - 2
"""Body bytes a RECEIPTS has for its records (a control datagram's body
room, less the two counts): six receipts, or five and a claim, fit."""
MAX_REPORT_RELAYS = 20


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Receipt:
    relay: PublicKey
    peer: PublicKey
    session_id: bytes
    seq: int
    nbytes: int
    time_ms: int
    signature: bytes = bytes(SIGNATURE_LEN)

    def signed_part(self) -> bytes:
        w = Writer()
        w.push_bytes(self.relay.raw, KEY_LEN)
        w.push_bytes(self.peer.raw, KEY_LEN)
        w.push_bytes(self.session_id, SESSION_ID_LEN)
        w.push_u32(self.seq)
        w.push_u64(self.nbytes)
        w.push_u64(self.time_ms)
        return w.getvalue()

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise LocalProtocolError("signatures are 64 bytes")
        return self.signed_part() + self.signature

    def signed_by(self, private_key: PrivateKey) -> Receipt:
        """This receipt signed with the peer's WireGuard key (XEdDSA)."""
        if private_key.public_key() != self.peer:
            raise LocalProtocolError("a receipt is signed by its peer")
        sig = xeddsa.sign(private_key.raw, RECEIPT_DOMAIN + self.signed_part())
        return Receipt(
            self.relay, self.peer, self.session_id, self.seq, self.nbytes, self.time_ms, sig
        )

    def verify(self) -> bool:
        return xeddsa.verify(self.peer.raw, RECEIPT_DOMAIN + self.signed_part(), self.signature)


def pull_receipt(b: Buffer) -> Receipt:
    return Receipt(
        relay=PublicKey(b.pull_bytes(KEY_LEN)),
        peer=PublicKey(b.pull_bytes(KEY_LEN)),
        session_id=b.pull_bytes(SESSION_ID_LEN),
        seq=b.pull_u32(),
        nbytes=b.pull_u64(),
        time_ms=b.pull_u64(),
        signature=b.pull_bytes(SIGNATURE_LEN),
    )


def decode_receipt(data: bytes) -> Receipt:
    b = Buffer(data)
    r = pull_receipt(b)
    b.expect_end()
    return r


@dataclass(frozen=True, slots=True)
class Claim:
    """``member`` runs ``relay`` (from ``issued_ms`` on; a newer claim for the
    same relay replaces it). Endorsed: the relay was started with it."""

    member: PublicKey
    relay: PublicKey
    issued_ms: int
    member_signature: bytes
    relay_signature: bytes = bytes(SIGNATURE_LEN)

    def member_part(self) -> bytes:
        w = Writer()
        w.push_bytes(self.member.raw, KEY_LEN)
        w.push_bytes(self.relay.raw, KEY_LEN)
        w.push_u64(self.issued_ms)
        return w.getvalue()

    def signed_claim(self) -> bytes:
        """What the member signs and ``credits claim`` writes (136 bytes)."""
        return self.member_part() + self.member_signature

    def encode(self) -> bytes:
        if (
            len(self.member_signature) != SIGNATURE_LEN
            or len(self.relay_signature) != SIGNATURE_LEN
        ):
            raise LocalProtocolError("signatures are 64 bytes")
        return self.signed_claim() + self.relay_signature

    def member_signed(self) -> bool:
        return xeddsa.verify(
            self.member.raw, CLAIM_DOMAIN + self.member_part(), self.member_signature
        )

    def relay_signed(self) -> bool:
        return verify_signature(
            self.relay, ENDORSE_DOMAIN + self.signed_claim(), self.relay_signature
        )

    def verify(self) -> bool:
        return self.member_signed() and self.relay_signed()

    def endorsed_by(self, identity: RelayIdentity) -> Claim:
        if identity.public != self.relay:
            raise LocalProtocolError("only the claimed relay endorses a claim")
        sig = identity.sign(ENDORSE_DOMAIN + self.signed_claim())
        return Claim(self.member, self.relay, self.issued_ms, self.member_signature, sig)


def make_claim(private_key: PrivateKey, relay: PublicKey, issued_ms: int) -> Claim:
    """A member's claim that it runs ``relay`` (not yet endorsed)."""
    unsigned = Claim(private_key.public_key(), relay, issued_ms, bytes(SIGNATURE_LEN))
    sig = xeddsa.sign(private_key.raw, CLAIM_DOMAIN + unsigned.member_part())
    return Claim(unsigned.member, relay, issued_ms, sig)


def pull_claim(b: Buffer, endorsed: bool = True) -> Claim:
    return Claim(
        member=PublicKey(b.pull_bytes(KEY_LEN)),
        relay=PublicKey(b.pull_bytes(KEY_LEN)),
        issued_ms=b.pull_u64(),
        member_signature=b.pull_bytes(SIGNATURE_LEN),
        relay_signature=b.pull_bytes(SIGNATURE_LEN) if endorsed else bytes(SIGNATURE_LEN),
    )


def decode_signed_claim(data: bytes) -> Claim:
    """The member-signed 136 bytes a claim file holds."""
    b = Buffer(data)
    c = pull_claim(b, endorsed=False)
    b.expect_end()
    return c


# ---------------------------------------------------------------- agent <-> relay


@dataclass(frozen=True, slots=True)
class ReceiptRequest(Body):
    """The relay asks the peer to acknowledge the session's bytes so far."""

    TYPE: ClassVar[MsgType] = MsgType.RECEIPT_REQUEST
    session_id: bytes
    seq: int
    claimed: int

    def encode_body(self, w: Writer) -> None:
        w.push_bytes(self.session_id, SESSION_ID_LEN)
        w.push_u32(self.seq)
        w.push_u64(self.claimed)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(session_id=b.pull_bytes(SESSION_ID_LEN), seq=b.pull_u32(), claimed=b.pull_u64())


@dataclass(frozen=True, slots=True)
class ReceiptBody(Body):
    """RECEIPT: the peer's signed acknowledgement."""

    TYPE: ClassVar[MsgType] = MsgType.RECEIPT
    receipt: Receipt

    def encode_body(self, w: Writer) -> None:
        w.push_bytes(self.receipt.encode(), RECEIPT_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(pull_receipt(b))


@dataclass(frozen=True, slots=True)
class CreditQuery(Body):
    TYPE: ClassVar[MsgType] = MsgType.CREDIT_QUERY
    query_id: int
    member: PublicKey

    def encode_body(self, w: Writer) -> None:
        w.push_u32(self.query_id)
        w.push_bytes(self.member.raw, KEY_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(query_id=b.pull_u32(), member=PublicKey(b.pull_bytes(KEY_LEN)))


@dataclass(frozen=True, slots=True)
class RelayEarning:
    """What one relay the member runs earned: bytes and receipts."""

    relay: PublicKey
    nbytes: int
    receipts: int


@dataclass(frozen=True, slots=True)
class CreditReport(Body):
    TYPE: ClassVar[MsgType] = MsgType.CREDIT_REPORT
    query_id: int
    member: PublicKey
    window_days: int
    earned: int
    used: int
    used_receipts: int
    relays: tuple[RelayEarning, ...] = ()

    @property
    def balance(self) -> int:
        return self.earned - self.used

    def encode_body(self, w: Writer) -> None:
        if len(self.relays) > MAX_REPORT_RELAYS:
            raise LocalProtocolError(f"at most {MAX_REPORT_RELAYS} relays in a report")
        w.push_u32(self.query_id)
        w.push_bytes(self.member.raw, KEY_LEN)
        w.push_u16(self.window_days)
        w.push_u64(self.earned)
        w.push_u64(self.used)
        w.push_u32(self.used_receipts)
        w.push_u8(len(self.relays))
        for r in self.relays:
            w.push_bytes(r.relay.raw, KEY_LEN)
            w.push_u64(r.nbytes)
            w.push_u32(r.receipts)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        qid = b.pull_u32()
        member = PublicKey(b.pull_bytes(KEY_LEN))
        window, earned, used, used_n = b.pull_u16(), b.pull_u64(), b.pull_u64(), b.pull_u32()
        n = b.pull_u8()
        if n > MAX_REPORT_RELAYS:
            raise Malformed(f"{n} relays in a credit report (at most {MAX_REPORT_RELAYS})")
        relays = tuple(
            RelayEarning(PublicKey(b.pull_bytes(KEY_LEN)), b.pull_u64(), b.pull_u32())
            for _ in range(n)
        )
        return cls(qid, member, window, earned, used, used_n, relays)


# ---------------------------------------------------------------- relay <-> relay


@dataclass(frozen=True, slots=True)
class Receipts(Body):
    """A batch of receipts and claims a relay spreads to another."""

    TYPE: ClassVar[MsgType] = MsgType.RECEIPTS
    receipts: tuple[Receipt, ...] = ()
    claims: tuple[Claim, ...] = ()

    def encode_body(self, w: Writer) -> None:
        if len(self.receipts) > MAX_RECEIPTS_PER_MESSAGE or len(self.claims) > (
            MAX_CLAIMS_PER_MESSAGE
        ):
            raise LocalProtocolError("too many records for one RECEIPTS")
        if len(self.receipts) * RECEIPT_LEN + len(self.claims) * CLAIM_LEN > RECEIPTS_ROOM:
            raise LocalProtocolError("RECEIPTS records exceed one datagram")
        w.push_u8(len(self.receipts))
        for r in self.receipts:
            w.push_bytes(r.encode(), RECEIPT_LEN)
        w.push_u8(len(self.claims))
        for c in self.claims:
            w.push_bytes(c.encode(), CLAIM_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        n = b.pull_u8()
        if n > MAX_RECEIPTS_PER_MESSAGE:
            raise Malformed(f"{n} receipts in one message")
        receipts = tuple(pull_receipt(b) for _ in range(n))
        m = b.pull_u8()
        if m > MAX_CLAIMS_PER_MESSAGE:
            raise Malformed(f"{m} claims in one message")
        return cls(receipts, tuple(pull_claim(b) for _ in range(m)))


def pack_records(receipts: list[Receipt], claims: list[Claim]) -> list[Receipts]:
    """Records cut into RECEIPTS messages that each fit one datagram."""
    out: list[Receipts] = []
    rs, cs = list(receipts), list(claims)
    while rs or cs:
        batch_c = cs[: min(MAX_CLAIMS_PER_MESSAGE, RECEIPTS_ROOM // CLAIM_LEN)]
        cs = cs[len(batch_c) :]
        room = (RECEIPTS_ROOM - len(batch_c) * CLAIM_LEN) // RECEIPT_LEN
        batch_r = rs[: min(MAX_RECEIPTS_PER_MESSAGE, room)]
        rs = rs[len(batch_r) :]
        out.append(Receipts(tuple(batch_r), tuple(batch_c)))
    return out


@dataclass(frozen=True, slots=True)
class ReceiptsAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.RECEIPTS_ACK
    stored: int
    refused: int

    def encode_body(self, w: Writer) -> None:
        w.push_u8(self.stored)
        w.push_u8(self.refused)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(stored=b.pull_u8(), refused=b.pull_u8())


RECEIPT_BODIES: tuple[type[Body], ...] = (
    ReceiptRequest,
    ReceiptBody,
    CreditQuery,
    CreditReport,
    Receipts,
    ReceiptsAck,
)
