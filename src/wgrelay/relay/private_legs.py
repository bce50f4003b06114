"""Private paths: a session over two relays, neither knowing both peers (sans-I/O).

Theory of operation
-------------------
``wgrelay up --private`` (proto/sealed.py has the message flow). A's agent
sends its entry relay R1 a CONNECTION_REQUEST_SEALED: the exit relay R2 in
clear, the target B in a box only R2 opens, A's own key in a box inside it
that only B opens.

1. **Entry relay R1** knows A (registered here) and R2, never B. It checks
   what it can: A registered, R2 a live relay it runs legs with
   (``--leg-relay``), its quotas. It cannot check B against its policy:
   B's side of the session is an opaque **token** (32 random bytes drawn
   per session), in the session, the pair index, the leg and the pending
   request. It opens the session pending, B's side at R2's address, and
   sends LEG_OPEN_SEALED (the box, unchanged) to R2 until R2 answers.
   A's retransmitted request (same ``request_id``) joins the same session;
   the same box under another id is refused (``replayed``).
2. **Exit relay R2** takes LEG_OPEN_SEALED from a relay it runs legs with,
   at a proven address, opens the box (``undecryptable`` otherwise), refuses
   a stale or repeated box, and learns B: B must be registered here and
   accept sessions, allowed by its policy, within quotas. It cannot check A:
   it **takes the previous relay's word** that A is allowed there (R1 is a
   relay its operator listed with ``--leg-relay``, as for any leg: that
   relay vouches for its peer). A's side is a token too. It offers B a
   SESSION_OFFER_SEALED carrying B's box; B's agent opens it, learns A, and
   accepts only one of its own WireGuard peers, offered by the relay the box
   names. B's answer goes back as LEG_ANSWER; everything after (data, close,
   a relay lost) is an ordinary leg (legs.py).

Neither relay logs, counts or labels the hidden key: it never has it.
Private sessions are framed on every side: a session port checks a
handshake's mac1 against the other peer's key (ports.py), which the relay
must not know. docs/SECURITY.md says what each party learns.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import KEY_LEN, Capability, Status
from wgrelay.proto.federation import LegAnswer
from wgrelay.proto.sealed import (
    ConnectionRequestSealed,
    LegOpenSealed,
    SealedReplays,
    SessionOfferSealed,
    open_for_exit,
)
from wgrelay.relay.admission import Inbound
from wgrelay.relay.legs import LEG_ANSWER_GRACE_S, Leg, LegsCore
from wgrelay.relay.sessions import Registration, Session
from wgrelay.relay.stats import DropReason

log = logging.getLogger(__name__)

_NO_SESSION = bytes(8)
_REMEMBERED = 1024
"""Answers each relay keeps to repeat (bounded: the oldest go first)."""

_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(memory: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > _REMEMBERED:
        memory.popitem(last=False)


@dataclass(slots=True)
class Sealed:
    """What a relay keeps of a private session beside its leg."""

    token: bytes
    """The hidden side's stand-in key."""
    box: bytes
    """Entry: the box for the exit relay (LEG_OPEN_SEALED goes again);
    exit: the target's box (SESSION_OFFER_SEALED goes again)."""
    request: tuple[bytes, int] | None = None
    """Entry: (initiator, request_id) of the request that opened it."""
    answered: Status | None = None
    """Entry: what the initiator was told (a late retransmission hears a
    refusal again)."""


class PrivateLegsCore(LegsCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sealed: dict[bytes, Sealed] = {}
        """Private sessions by id, at the entry or the exit relay."""
        self._tokens: set[bytes] = set()
        self._requests: dict[tuple[bytes, int], bytes] = {}
        """Entry: (initiator, request_id) -> session id, for retransmissions."""
        self._boxes: dict[bytes, bytes] = {}
        """Entry: box -> session id (the same box under another request is a copy)."""
        self._replays = SealedReplays()
        self._done: OrderedDict[tuple[bytes, int], Status | None] = OrderedDict()
        """Entry: requests answered and gone, and how (a late retransmission
        is not new: a refusal is repeated, anything else dropped)."""
        self._refused: OrderedDict[tuple[PublicKey, bytes], Status] = OrderedDict()
        """Exit: (relay, session id) refused, and how (a retransmission hears it again)."""

    def capabilities(self) -> int:
        caps = super().capabilities()
        return caps | Capability.PRIVATE_PATHS if self.config.leg_relays else caps

    def _hidden(self, key: bytes) -> bool:
        return key in self._tokens

    def _who(self, key: bytes) -> str:
        # a token printed as a key would send an operator looking for a
        # peer that does not exist
        return "a private peer" if key in self._tokens else super()._who(key)

    def _new_token(self) -> bytes:
        while True:
            token = self._rng(KEY_LEN)
            if token not in self._tokens and token not in self.table.regs:
                self._tokens.add(token)
                return token

    def _wall_ms(self, now: float) -> int:
        return int(self._wall_at(now) * 1000)

    # ------------------------------------------------------------ entry relay

    def _handle_connection_request_sealed(
        self, inb: Inbound, body: ConnectionRequestSealed
    ) -> None:
        now, rid, key = inb.now, body.request_id, inb.key

        def respond(status: Status) -> None:
            self._reply(inb, self._response(rid, status, _NO_SESSION))

        reg = self._requester(inb, body.TYPE)
        if reg is None:
            return
        if (key, rid) in self._done:
            told = self._done[(key, rid)]
            if told is None or told == Status.SUCCESS:
                self._drop(inb, DropReason.UNKNOWN_SESSION)  # its session came and went
            else:
                respond(told)  # our refusal was lost: again, with no second leg
            return
        known = self._requests.get((key, rid))
        if known is not None and (s := self.table.find(known)) is not None:
            if s.sid in self.sessions:
                respond_sid = self._response(rid, Status.SUCCESS, s.sid)
                self._reply(inb, respond_sid)
            else:
                s.waiters[key] = rid  # a retransmission: answered when R2 answers
            return
        if self._boxes.get(body.sealed) is not None:
            self._count_leg("refused_replayed")  # the same box under another request
            respond(Status.REJECTED)
            return
        via = body.exit_relay
        if self._shutting_down or via == self.identity.public:
            respond(Status.ERROR)
            return
        if via.raw not in self.config.leg_relays:
            self._count_leg("refused_not_trusted")
            respond(Status.TARGET_UNREACHABLE)
            return
        m = self.federation.directory.get(via)
        addr = self._relay_addr(via)
        if m is None or addr is None:
            self._count_leg("refused_unknown_relay")
            respond(Status.TARGET_UNREACHABLE)
            return
        if not m.announcement.info.capabilities & Capability.PRIVATE_PATHS:
            self._count_leg("refused_not_private")
            respond(Status.TARGET_UNREACHABLE)
            return
        token = self._new_token()
        far = self._far_side(token, addr)
        refusal = self.table.admit_session(reg, far)
        if refusal is not None:
            self._tokens.discard(token)
            self.stats.quota_hits[refusal.value] += 1
            respond(Status.RESOURCE_LIMIT)
            return
        s = self.table.open(self._new_session_id(), reg, far, now)
        s.offer_deadline = now + self.config.offer_timeout_s + LEG_ANSWER_GRACE_S
        s.offer_next = math.inf  # offered by the exit relay, never by us
        s.waiters[key] = rid
        leg = Leg(via, addr, entry=True)
        self.legs[s.sid] = leg
        self.sealed[s.sid] = Sealed(token, body.sealed, (key, rid))
        self._requests[(key, rid)] = s.sid
        self._boxes[body.sealed] = s.sid
        # (no session ports: see the module's docstring)
        log.info(
            "session %s: %s -> a private peer through relay %s",
            s.sid.hex(),
            PublicKey(key).short(),
            via.short(),
        )
        self._send_leg_open(s, leg, now)

    def _send_leg_open(self, s: Session, leg: Leg, now: float) -> None:
        p = self.sealed.get(s.sid)
        if p is None:
            super()._send_leg_open(s, leg, now)
            return
        leg.next_send = now + self.config.offer_retransmit_s
        self._to_relay(leg.relay, LegOpenSealed(s.sid, p.box, 2), now)

    # ------------------------------------------------------------ exit relay

    def _handle_leg_open_sealed(self, inb: Inbound, body: LegOpenSealed) -> None:
        relay = self._leg_opener(inb)
        now, sid = inb.now, body.session_id
        if relay is None or self._leg_open_again(relay, sid, now):
            return

        again = self._refused.get((relay, sid))
        if again is not None:  # refused before: the same answer, not counted twice
            self._to_relay(relay, LegAnswer(sid, again), now)
            return

        def refuse(status: Status, why: str) -> None:
            self._count_leg(f"refused_{why}")
            _remember(self._refused, (relay, sid), status)
            self._to_relay(relay, LegAnswer(sid, status), now)

        if self._shutting_down:
            refuse(Status.ERROR, "bad_request")
            return
        try:
            opened = open_for_exit(body.sealed, self.identity)
        except RemoteProtocolError as e:
            refuse(Status.ERROR, e.reason)
            return
        why = self._replays.check(opened.digest, opened.issued_ms, self._wall_ms(now))
        if why is not None:
            refuse(Status.REJECTED, why)
            return
        b = opened.target.raw
        if not self.table.new_id_free(sid):
            refuse(Status.ERROR, "id_taken")
            return
        if not self.policy.allows(b):
            refuse(Status.AUTH_FAILED, "policy")
            return
        treg = self.table.regs.get(b)
        if treg is None or not treg.accept_incoming:
            refuse(Status.TARGET_UNREACHABLE, "not_here")
            return
        token = self._new_token()
        near = self._far_side(token, inb.addr)
        refusal = self.table.admit_session(near, treg)
        if refusal is not None:
            self._tokens.discard(token)
            self.stats.quota_hits[refusal.value] += 1
            refuse(Status.RESOURCE_LIMIT, "quota")
            return
        s = self.table.open(sid, near, treg, now)
        self.legs[sid] = Leg(relay, inb.addr, entry=False)
        self.sealed[sid] = Sealed(token, opened.peer_box)
        log.info(
            "session %s: a private peer through relay %s -> %s",
            sid.hex(),
            relay.short(),
            opened.target.short(),
        )
        self._send_offer(s, treg, now)

    def _send_offer(self, s: Session, treg: Registration, now: float) -> None:
        p = self.sealed.get(s.sid)
        if p is None:
            super()._send_offer(s, treg, now)
            return
        s.offer_next = now + self.config.offer_retransmit_s
        self._send(SessionOfferSealed(s.sid, p.box, self._port_of(s.sid, s.b_key)), treg, now)

    # ------------------------------------------------------------ both

    def _answer_waiters(self, s: Session, status: Status, now: float) -> None:
        p = self.sealed.get(s.sid)
        if p is not None and p.request is not None and p.answered is None:
            p.answered = status
        super()._answer_waiters(s, status, now)

    def _remove(self, s: Session) -> None:
        p = self.sealed.pop(s.sid, None)
        if p is not None:
            self._tokens.discard(p.token)
            if p.request is not None:
                self._requests.pop(p.request, None)
                self._boxes.pop(p.box, None)
                _remember(self._done, p.request, p.answered)
        super()._remove(s)

    def leg_stats(self) -> dict[str, int]:
        out = super().leg_stats()
        out["private_open"] = sum(1 for sid in self.sealed if sid in self.sessions)
        return out

    def private_tokens(self) -> frozenset[bytes]:
        """The hidden sides' stand-ins now held (tests look for them)."""
        return frozenset(self._tokens)
