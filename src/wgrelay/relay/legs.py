"""Multi-hop: one session across two relays, A-R1-R2-B (sans-I/O).

Theory of operation
-------------------
Peer A's network lets it reach relay R1 only, B's lets it reach R2 only. A's
agent finds B at R2 (B's location record), cannot register there, and asks
its home R1 for a session to B *through* R2: a CONNECTION_REQUEST with the
via flag and R2's key (the agent chooses the whole path; a relay never
bridges on its own). Then:

1. **Entry relay R1** checks what it checks for any request (A registered,
   B allowed by its policy, quotas; a session it already holds for the pair
   is answered as ever) and that R2 is a live relay it knows, not itself. It
   draws the session id and opens the session pending, A's side at A's
   address and B's side at R2's (the *leg*), and sends LEG_OPEN(id, A, B,
   hops 2) on its relay channel to R2, again every ``offer_retransmit_s``
   until R2 answers or the request times out.
2. **Exit relay R2** takes a LEG_OPEN only from a relay it knows, at an
   address that relay has proven (a cookie first), for a target registered
   *with it* that accepts sessions, both keys allowed by its policy, an id
   it does not hold already (a collision is refused: R1 picks ids, R2 never
   reuses one), within its quotas. It opens the session with A's side at
   the address the LEG_OPEN came from (R1's main socket) and offers it to B
   exactly as for a local request (SESSION_OFFER naming A).
3. B's answer goes back to R1 as LEG_ANSWER(id, status); R1 establishes and
   answers A. LEG_ANSWER and LEG_CLOSE are one-way notices on the sender's
   own channel (each relay is the client of its channel to the other).

**Data.** The id is the same at both relays, so a data frame goes on
unchanged: A -> R1 -> R2 -> B and back. Each relay's data path is the one
for any session: one lookup, one source comparison; R2 takes this session's
frames from R1's address as the initiator's side only, R1 from R2's as the
target's side only. A leg is framed (the relays' main sockets); the outer
sides may use port mode, and so may the leg: LEG_OPEN carries the entry
relay's session port for it and LEG_ANSWER the exit relay's, and each relay
pins its leg side to the other's port (ports.py ``PortTable.pin``: no
handshake latches it, no packet moves it). With all four sides in port mode
each relay forwards port to port and its kernel offload can take the whole
path; a relay without a port for the leg (port 0, its range exhausted)
frames it, and the other relay's leg side then bridges as any framed side
does. A leg is a session at both relays: it counts against
``max_connections``, the peers' and sources' limits (the other relay is one
source), and each direction has the session's bandwidth cap.

**Loops.** ``hops`` counts the relays on the path, the receiver included. A
relay opens a leg for a leg it was asked to carry only while ``hops`` is
below ``MAX_PATH_RELAYS`` and never to a relay already on the path. This
version never extends a leg: an exit relay carries only a target registered
with it, so a path has at most two relays and no loop can form.

**Ending.** Whichever relay's side ends (its peer closes, expires or is no
longer allowed, idle, shutdown, a spent budget) tells the other with
LEG_CLOSE(id, reason), which ends its side with that reason to its peer (a
SESSION_CLOSE), so A's agent fails over as for any lost session. A relay
the federation declares dead (or forgets) takes its legs with it: the other
relay closes its side with PEER_GONE at its next housekeeping tick.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from wgrelay.discovery.directory import Liveness
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import SESSION_ID_LEN, Capability, CloseReason, Status
from wgrelay.proto.envelope import ChannelKeys, ReplayWindow
from wgrelay.proto.federation import LegAnswer, LegClose, LegOpen
from wgrelay.proto.messages import Body, ConnectionRequest
from wgrelay.relay.admission import Addr, Inbound, KeyState, source_group
from wgrelay.relay.core_sessions import SessionsCore
from wgrelay.relay.limits import TokenBucket
from wgrelay.relay.ports import SideMode
from wgrelay.relay.sessions import Registration, Session, pair_of
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

LEG_ANSWER_GRACE_S = 2.0
"""The entry relay waits this much longer than an offer's timeout for the
exit relay's answer (the exit relay's own offer timeout runs first)."""

_NO_SESSION = bytes(SESSION_ID_LEN)


def _at_port(addr: Addr, port: int) -> Addr:
    """The other relay's session port at its address, in the form its
    packets come from: an IPv6 source has four fields (host, port, flowinfo,
    scope id), and a port's source check compares whole tuples."""
    return (addr[0], port, *addr[2:])


@dataclass(slots=True)
class Leg:
    """One relay's half of a session carried by two relays."""

    relay: PublicKey
    """The other relay."""
    addr: Addr
    """Where the other relay's frames come from and ours go (its side's address)."""
    entry: bool
    """We opened it (our peer is the initiator); False: we are the exit relay."""
    next_send: float = math.inf
    """Entry, pending: when LEG_OPEN goes again."""
    answered: Status | None = None
    """Exit: what we told the entry relay (a repeated LEG_OPEN hears it again)."""

    def local_key(self, s: Session) -> bytes:
        """The key of the session's side registered here."""
        return s.a_key if self.entry else s.b_key


class LegsCore(SessionsCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.legs: dict[bytes, Leg] = {}
        """By session id: the sessions that have a side at another relay."""
        self._leg_counts: dict[str, int] = {}
        # A leg's far side is a Registration that is never registered (not
        # in the table's ``regs``): nothing is ever sealed to it, its relay
        # is told through the relay channel. Its keys are never used.
        self._unsealable = KeyState(
            ChannelKeys(bytes(32), bytes(32), True), ReplayWindow(), TokenBucket(0.0, 0.0, 0.0)
        )

    def capabilities(self) -> int:
        caps = super().capabilities()
        return caps | Capability.MULTI_HOP if self.config.leg_relays else caps

    # ------------------------------------------------------------ entry relay

    def _handle_connection_request(self, inb: Inbound, body: ConnectionRequest) -> None:
        s = self.table.by_pair.get(pair_of(inb.key, body.target.raw))
        if s is not None:
            leg = self.legs.get(s.sid)
            if leg is not None and inb.key != leg.local_key(s):
                # the pair's session here reaches the requester at the other
                # relay: it cannot be joined from here
                resp = self._response(body.request_id, Status.TARGET_UNREACHABLE, _NO_SESSION)
                self._reply(inb, resp)
                return
            super()._handle_connection_request(inb, body)  # joined as ever
            return
        if body.via is None or body.via == self.identity.public:
            super()._handle_connection_request(inb, body)
            return
        self._request_via(inb, body, body.via)

    def _request_via(self, inb: Inbound, body: ConnectionRequest, via: PublicKey) -> None:
        now, rid, key, target = inb.now, body.request_id, inb.key, body.target.raw

        def respond(status: Status) -> None:
            self._reply(inb, self._response(rid, status, _NO_SESSION))

        reg = self._requester(inb, body.TYPE)
        if reg is None:
            return
        refused = self._target_refusal(key, target)
        if refused is not None:
            respond(refused)
            return
        if via.raw not in self.config.leg_relays:
            # not a relay the operator runs legs with: the exit relay would
            # act on our word for A's identity, and a stranger's announced
            # address could be anyone's
            self._count_leg("refused_not_trusted")
            respond(Status.TARGET_UNREACHABLE)
            return
        addr = self._relay_addr(via)
        if addr is None:
            self._count_leg("refused_unknown_relay")
            respond(Status.TARGET_UNREACHABLE)
            return
        far = self._far_side(target, addr)
        refusal = self.table.admit_session(reg, far)
        if refusal is not None:
            self.stats.quota_hits[refusal.value] += 1
            respond(Status.RESOURCE_LIMIT)
            return
        s = self.table.open(self._new_session_id(), reg, far, now)
        s.offer_deadline = now + self.config.offer_timeout_s + LEG_ANSWER_GRACE_S
        s.offer_next = math.inf  # B is offered the session by the exit relay, never by us
        self._leg_ports(s, far_is_a=False)
        s.waiters[key] = rid
        leg = Leg(via, addr, entry=True)
        self.legs[s.sid] = leg
        log.info(
            "session %s: %s -> %s through relay %s",
            s.sid.hex(),
            PublicKey(key).short(),
            body.target.short(),
            via.short(),
        )
        self._send_leg_open(s, leg, now)

    def _send_leg_open(self, s: Session, leg: Leg, now: float) -> None:
        leg.next_send = now + self.config.offer_retransmit_s
        port = s.ports.b.port if s.ports is not None else 0
        body = LegOpen(s.sid, PublicKey(s.a_key), PublicKey(s.b_key), 2, port)
        self._to_relay(leg.relay, body, now)

    def _handle_leg_answer(self, inb: Inbound, body: LegAnswer) -> None:
        relay = self._relay_of(inb)
        leg = self.legs.get(body.session_id)
        if (
            relay is None
            or leg is None
            or not leg.entry
            or leg.relay != relay
            or (inb.addr[0], inb.addr[1]) != (leg.addr[0], leg.addr[1])
        ):
            # (only from the address the leg's data will go to: an answer
            # from elsewhere must not establish a session towards it)
            self._drop(inb, DropReason.UNKNOWN_SESSION)
            return
        s = self.table.pending.get(body.session_id)
        if s is None:
            return  # a repeated answer: done already
        if body.status == Status.SUCCESS:
            if body.port and s.ports is not None:
                self.ports_pin(s, far_is_a=False, addr=_at_port(leg.addr, body.port))
            self._establish(s, inb.now)
            self._count_leg("opened_entry")
            return
        log.info("session %s: relay %s answered %s", s.sid.hex(), relay.short(), body.status.name)
        self._answer_waiters(s, body.status, inb.now)
        self._remove(s)

    # ------------------------------------------------------------ exit relay

    def _leg_opener(self, inb: Inbound) -> PublicKey | None:
        """The relay a LEG_OPEN (plain or sealed) came from, if it may open
        legs here and proved its address; None: dropped (or challenged)."""
        relay = self._relay_of(inb)
        if relay is None:
            self._drop(inb, DropReason.UNEXPECTED)  # only relays we know
            return None
        if relay.raw not in self.config.leg_relays:
            # it vouches for the initiator's identity (or, private, for a
            # peer we never learn): only relays the operator trusts may (any
            # relay can introduce itself by gossip)
            self._count_leg("refused_not_trusted")
            self._drop(inb, DropReason.NOT_ALLOWED)
            return None
        if not inb.proven:
            # our answer leaves later (once B answers), so no cookie could
            # stand in for it: the relay proves its address now
            self._admission.challenge(inb)
            inb.dropped = True
            return None
        return relay

    def _leg_open_again(self, relay: PublicKey, sid: bytes, now: float) -> bool:
        """A LEG_OPEN for a leg we hold from that relay: answered again if we
        answered already (our answer was lost). True: nothing more to do."""
        leg = self.legs.get(sid)
        if leg is None or leg.relay != relay or leg.entry:
            return False
        if leg.answered is not None:
            s = self.table.find(sid)
            again = self._leg_answer(s, leg.answered) if s else LegAnswer(sid, leg.answered)
            self._to_relay(relay, again, now)
        return True

    def _handle_leg_open(self, inb: Inbound, body: LegOpen) -> None:
        relay = self._leg_opener(inb)
        now, sid = inb.now, body.session_id
        if relay is None or self._leg_open_again(relay, sid, now):
            return

        def refuse(status: Status, why: str) -> None:
            self._count_leg(f"refused_{why}")
            self._to_relay(relay, LegAnswer(sid, status), now)

        a, b = body.initiator.raw, body.target.raw
        if self._shutting_down or a == b:
            refuse(Status.ERROR, "bad_request")
            return
        if not self.table.new_id_free(sid):
            refuse(Status.ERROR, "id_taken")
            return
        if not (self.policy.allows(a) and self.policy.allows(b)):
            refuse(Status.AUTH_FAILED, "policy")
            return
        old = self.table.by_pair.get(pair_of(a, b))
        if old is not None:
            old_leg = self.legs.get(old.sid)
            if old_leg is None or old_leg.relay != relay or old_leg.entry:
                # carried here already, or both relays opened a leg for the
                # pair at once: refused (the agents' next request settles it)
                refuse(Status.REJECTED, "pair_busy")
                return
            # the entry relay replaced its session for the pair (a lost LEG_CLOSE)
            self._close(old, CloseReason.REPLACED, {old.b_key}, now)
        treg = self.table.regs.get(b)
        if treg is None or not treg.accept_incoming:
            # (never on to another relay: this version's paths have two)
            refuse(Status.TARGET_UNREACHABLE, "not_here")
            return
        near = self._far_side(a, inb.addr)
        refusal = self.table.admit_session(near, treg)
        if refusal is not None:
            self.stats.quota_hits[refusal.value] += 1
            refuse(Status.RESOURCE_LIMIT, "quota")
            return
        s = self.table.open(sid, near, treg, now)
        self._leg_ports(s, far_is_a=True)
        if body.port and s.ports is not None:
            self.ports_pin(s, far_is_a=True, addr=_at_port(inb.addr, body.port))
        self.legs[sid] = Leg(relay, inb.addr, entry=False)
        self._send_offer(s, treg, now)

    def _answer_waiters(self, s: Session, status: Status, now: float) -> None:
        leg = self.legs.get(s.sid)
        if leg is not None and not leg.entry and leg.answered is None:
            leg.answered = status
            self._to_relay(leg.relay, self._leg_answer(s, status), now)
            if status == Status.SUCCESS:
                self._count_leg("opened_exit")
        super()._answer_waiters(s, status, now)

    # ------------------------------------------------------------ both

    def _handle_leg_close(self, inb: Inbound, body: LegClose) -> None:
        relay = self._relay_of(inb)
        leg = self.legs.get(body.session_id)
        s = self.table.find(body.session_id)
        if relay is None or leg is None or s is None or leg.relay != relay:
            self._drops[DropReason.UNKNOWN_SESSION] += 1
            return
        self._end(s, leg, body.reason, inb.now)

    def _end(self, s: Session, leg: Leg, reason: CloseReason, now: float) -> None:
        """The other relay's side is gone: end ours (our peer is told)."""
        if leg.answered is None:
            leg.answered = Status.TARGET_UNREACHABLE  # nothing to tell that relay now
        if s.sid in self.table.pending:
            self._answer_waiters(s, Status.TARGET_UNREACHABLE, now)
        self._close(s, reason, {leg.local_key(s)}, now)

    def _close(self, s: Session, reason: CloseReason, notify: set[bytes], now: float) -> None:
        leg = self.legs.get(s.sid)
        if leg is not None:
            far = s.b_key if leg.entry else s.a_key
            if far in notify:  # our side ended: so does the other relay's
                self._to_relay(leg.relay, LegClose(s.sid, reason), now)
        super()._close(s, reason, notify, now)

    def _remove(self, s: Session) -> None:
        leg = self.legs.pop(s.sid, None)
        if leg is not None:
            role = "entry" if leg.entry else "exit"
            self._count_leg(f"closed_{role}")
            self._count_leg(f"packets_{role}", s.packets)
            self._count_leg(f"bytes_{role}", s.bytes)
        super()._remove(s)

    def policy_changed(self, now: float) -> None:
        """Also end multi-hop sessions of a key no longer allowed: its far
        side is never registered here, so dropping registrations misses it."""
        super().policy_changed(now)
        for sid in list(self.legs):
            s = self.table.find(sid)
            # (a private session's hidden side is a token: no key to check)
            if s is not None and not all(
                self.policy.allows(k) for k in (s.a_key, s.b_key) if not self._hidden(k)
            ):
                log.info("session %s: a key is no longer allowed; ending its leg", sid.hex())
                self._close(s, CloseReason.PEER_GONE, {s.a_key, s.b_key}, now)

    def _housekeeping(self, now: float) -> None:
        super()._housekeeping(now)
        for sid, leg in list(self.legs.items()):
            s = self.table.find(sid)
            if s is None:
                self.legs.pop(sid, None)
                continue
            if not self._relay_live(leg.relay):
                log.info("session %s: relay %s is gone", sid.hex(), leg.relay.short())
                self._end(s, leg, CloseReason.PEER_GONE, now)
            elif leg.entry and sid in self.table.pending and now >= leg.next_send:
                self._send_leg_open(s, leg, now)

    # ------------------------------------------------------------ plumbing

    def _hidden(self, key: bytes) -> bool:
        """A private session's stand-in for a key this relay must not know
        (private_legs.py); never one here."""
        return False

    def _relay_of(self, inb: Inbound) -> PublicKey | None:
        m = self.federation.directory.by_x25519(inb.key)
        if m is None:
            return None
        self.federation.heard_from(m.key, inb.now)
        return m.key

    def _relay_live(self, key: PublicKey) -> bool:
        m = self.federation.directory.get(key)
        return m is not None and m.liveness is not Liveness.DEAD

    def _relay_addr(self, key: PublicKey) -> Addr | None:
        """Where a live relay we know is reached (our channel's address);
        None for a suspect one too: a new leg is not worth the wait."""
        m = self.federation.directory.get(key)
        if m is None or m.liveness is not Liveness.ALIVE:
            return None
        ep = self.federation._addr_of(key)  # the address its channel uses
        if ep is None:
            return None
        # as recvfrom gives an IPv6 source (the source check compares tuples)
        return (ep[0], ep[1], 0, 0) if ":" in ep[0] else ep

    def _to_relay(self, key: PublicKey, body: Body, now: float) -> None:
        # on our own channel to it: cookies and keys as for gossip
        if not self.federation._send(key, body, now):
            self._count_leg("send_failed")

    def _far_side(self, key: bytes, addr: Addr) -> Registration:
        """A session's side at another relay: its peer's key, the relay's address."""
        return Registration(
            key=key,
            addr=addr,
            source=source_group(addr),
            ks=self._unsealable,
            expires=math.inf,
            accept_incoming=False,
        )

    def _leg_ports(self, s: Session, far_is_a: bool) -> None:
        """Session ports for both sides; the leg's side is framed until the
        other relay tells its port (``ports_pin``)."""
        if self.ports is None:
            return
        pair = self.ports.open(s)
        if pair is not None:
            (pair.a if far_is_a else pair.b).mode = SideMode.FRAMED

    def ports_pin(self, s: Session, far_is_a: bool, addr: Addr) -> None:
        """The other relay's session port for the leg: our leg side sends there."""
        pair = s.ports
        if self.ports is not None and pair is not None:
            self.ports.pin(pair, pair.a if far_is_a else pair.b, addr)

    def _leg_answer(self, s: Session, status: Status) -> LegAnswer:
        port = s.ports.a.port if s.ports is not None and status == Status.SUCCESS else 0
        return LegAnswer(s.sid, status, port)

    def _count_leg(self, what: str, n: int = 1) -> None:
        self._leg_counts[what] = self._leg_counts.get(what, 0) + n

    def leg_stats(self) -> dict[str, int]:
        """Legs open and what they carried, by role (entry: we opened it)."""
        out = dict(self._leg_counts)
        for role, entry in (("entry", True), ("exit", False)):
            live = [s for sid, leg in self.legs.items() if leg.entry == entry
                    and (s := self.table.find(sid)) is not None]  # fmt: skip
            out[f"open_{role}"] = sum(1 for s in live if s.sid in self.sessions)
            out[f"packets_{role}"] = out.get(f"packets_{role}", 0) + sum(s.packets for s in live)
            out[f"bytes_{role}"] = out.get(f"bytes_{role}", 0) + sum(s.bytes for s in live)
        return out

    def get_stats(self) -> RelayStats:
        st = super().get_stats()
        st.legs = self.leg_stats()
        return st
