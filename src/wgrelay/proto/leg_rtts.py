"""Whole-path choice on the wire: an agent asks its home relay which relays it
carries legs to, and its RTT to each (client/plan_paths.py weighs the answer).

Messages (inside the usual envelope; integers big endian)::

    LEG_RTT_QUERY 0x58 agent->relay  query_id u32
    LEG_RTT_REPLY 0x59 relay->agent  query_id u32 | n u8 | n x (relay key 32B | rtt_ms u16)

The reply lists the relays this relay would open a leg to now (its operator
lists them, ``start-relay --leg-relay``, and it holds them alive), each with
its smoothed RTT to that relay, measured from its own PINGs
(relay/relay_rtts.py); ``rtt_ms`` 0xFFFF: not measured yet. At most
``MAX_LEG_RTTS`` relays (the nearest first when more are listed): the reply
fits one datagram. Only a registered agent is answered (NOT_REGISTERED
otherwise); a relay that does not run legs answers with n = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PublicKey
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import KEY_LEN, RTT_UNKNOWN, MsgType

MAX_LEG_RTTS = 30
"""Relays in one LEG_RTT_REPLY: 34 bytes each, 1,025 bytes of body at most."""


@dataclass(frozen=True, slots=True)
class LegRttQuery(Body):
    """Which relays do you carry legs to, and how far is each?"""

    TYPE: ClassVar[MsgType] = MsgType.LEG_RTT_QUERY
    query_id: int

    def encode_body(self, w: Writer) -> None:
        w.push_u32(self.query_id)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(b.pull_u32())


@dataclass(frozen=True, slots=True)
class LegRttReply(Body):
    """The relays the sender carries legs to, with its RTT to each in ms
    (``RTT_UNKNOWN``: not measured yet)."""

    TYPE: ClassVar[MsgType] = MsgType.LEG_RTT_REPLY
    query_id: int
    relays: tuple[tuple[PublicKey, int], ...] = ()

    def encode_body(self, w: Writer) -> None:
        if len(self.relays) > MAX_LEG_RTTS:
            raise LocalProtocolError(f"at most {MAX_LEG_RTTS} relays in a LEG_RTT_REPLY")
        w.push_u32(self.query_id)
        w.push_u8(len(self.relays))
        for key, rtt_ms in self.relays:
            w.push_bytes(key.raw, KEY_LEN)
            w.push_u16(rtt_ms)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        qid = b.pull_u32()
        n = b.pull_u8()
        if n > MAX_LEG_RTTS:
            raise Malformed(f"{n} relays in a LEG_RTT_REPLY (at most {MAX_LEG_RTTS})")
        relays = tuple((PublicKey(b.pull_bytes(KEY_LEN)), b.pull_u16()) for _ in range(n))
        return cls(qid, relays)

    def rtts_ms(self) -> dict[PublicKey, float | None]:
        """Relay -> RTT in ms, None where not measured yet."""
        return {k: None if rtt == RTT_UNKNOWN else float(rtt) for k, rtt in self.relays}


LEG_RTT_BODIES: tuple[type[Body], ...] = (LegRttQuery, LegRttReply)
