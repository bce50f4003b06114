"""Registrations and sessions: the handlers of REGISTER, HEARTBEAT,
CONNECTION_REQUEST, SESSION_ANSWER and SESSION_CLOSE, and what ends them
(housekeeping, policy changes, shutdown). The protocol's story is in core.py;
the tables and their quotas in sessions.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from wgrelay.endpoint import endpoint_str
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    REGISTER_FLAG_ACCEPT_INCOMING,
    RTT_UNKNOWN,
    SESSION_ID_LEN,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.messages import (
    ConnectionRequest,
    ConnectionResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    Punch,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionHold,
    SessionOffer,
)
from wgrelay.relay.admission import Addr, Inbound
from wgrelay.relay.contention import Contention, Displacement
from wgrelay.relay.core_state import RelayCoreState
from wgrelay.relay.ports import PathChange, PortPair, is_stream_addr
from wgrelay.relay.sessions import (
    Listing,
    Refusal,
    Registration,
    Session,
    listing_of,
    pair_of,
)
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

PUNCH_INTERVAL_S = 1.0
"""At most one coordinated direct try per session this often: each makes
the relay send two messages, and an agent tries far less often (backoff)."""

PUNCH_HOLD_S = 1.0
"""How long a PUNCH holds delivery to both ports (an agent's try takes 0.8 s)."""

_REFUSAL_DETAIL = {
    Refusal.RELAY_FULL: "relay is full",
    Refusal.SOURCE_FULL: "too many registrations from your address",
}

log = logging.getLogger(__name__)


class SessionsCore(RelayCoreState):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contention = Contention()
        """Who comes first at a full relay (contention.py); its ``credits``
        are every balance 0 until the shell gives it a ledger."""

    # ------------------------------------------------------------ registration

    def _requester(self, inb: Inbound, ref: MsgType) -> Registration | None:
        """The sender's registration; None: told to register first (a
        request of type ``ref`` needs one)."""
        reg = self.table.regs.get(inb.key)
        if reg is None:
            self._reply(inb, Error(ErrorCode.NOT_REGISTERED, ref, "register first"))
        return reg

    def _target_refusal(self, key: bytes, target: bytes) -> Status | None:
        """Why ``key`` may not ask for a session to ``target`` here, if so."""
        if self._shutting_down or target == key:
            return Status.ERROR
        if not self.policy.allows(target):
            return Status.AUTH_FAILED
        return None

    def _bind_check(self, inb: Inbound, reg: Registration | None) -> bool:
        """May ``inb`` bind its key to its source address (new or moved)?"""
        if not inb.proven:
            self._admission.challenge(inb)
            return False
        if not self.usable_peer_address(inb.addr):
            self._drop(inb, DropReason.BAD_ADDRESS)
            return False
        if reg is not None and not inb.newer:
            # a delayed or replayed message must not move the peer back; an
            # honest peer that restarted after its clock ran ahead is told the
            # figure to continue above (else it could not move until its old
            # registration expired)
            self._drop(inb, DropReason.STALE_REBIND)
            newest = inb.ks.replay.newest
            self._admission.notice(
                inb, Error(ErrorCode.REPLAYED, inb.msg_type, "not newer than before", newest)
            )
            return False
        return True

    def _handle_register(self, inb: Inbound, body: Register) -> None:
        now = inb.now
        reg = self.table.regs.get(inb.key)
        if reg is None or reg.addr != inb.addr:
            if not self._bind_check(inb, reg):
                return
            if reg is None:
                refusal, victim = self.table.admit_registration(inb.addr)
                if refusal is not None:
                    self.stats.quota_hits[refusal.value] += 1
                    detail = _REFUSAL_DETAIL.get(refusal, "limit")
                    self._reply(inb, Error(ErrorCode.RESOURCE_LIMIT, body.TYPE, detail))
                    return
                if victim is not None:
                    self._evict(victim, now)
                ks = self._admission.forget_key(inb.key) or inb.ks
                reg = self.table.add(inb.key, inb.addr, ks, 0.0)
                log.info(
                    "peer %s registered from %s", PublicKey(inb.key).short(), endpoint_str(inb.addr)
                )
            else:
                self._move(reg, inb.addr, now)
        reg.accept_incoming = bool(body.flags & REGISTER_FLAG_ACCEPT_INCOMING)
        self._list(reg, listing_of(body.flags), body.rtt_ms, now)
        reg.expires = now + self.config.registration_ttl_s
        self._reply(
            inb,
            Registered(
                ttl_s=self.config.registration_ttl_s,
                heartbeat_s=self.config.heartbeat_interval_s,
                epoch=self.epoch,
                observed=(inb.addr[0], inb.addr[1]),
            ),
        )

    def _list(self, reg: Registration, listing: Listing, rtt_ms: int, now: float) -> None:
        """Publish (or withdraw) the registration's location record. A new
        record on a change of role: a standby promoted to home signs one
        newer than the dead home's, so lookups now lead here first."""
        if rtt_ms != RTT_UNKNOWN:
            reg.rtt_ms = rtt_ms
        if listing == reg.listing:
            self.federation.locations.reported_rtt(PublicKey(reg.key), reg.rtt_ms, now)
            return
        reg.listing = listing
        if listing is Listing.UNLISTED:
            self.federation.peer_gone(PublicKey(reg.key))
        else:
            standby = listing is Listing.STANDBY
            self.federation.peer_registered(PublicKey(reg.key), now, standby, reg.rtt_ms)

    def _handle_heartbeat(self, inb: Inbound, body: Heartbeat) -> None:
        reg = self.table.regs.get(inb.key)
        if reg is None:
            self._reply(inb, HeartbeatAck(body.seq, HeartbeatStatus.NOT_REGISTERED, self.epoch))
            return
        if reg.addr != inb.addr:
            if not self._bind_check(inb, reg):
                return
            self._move(reg, inb.addr, inb.now)
        reg.expires = inb.now + self.config.registration_ttl_s
        if body.rtt_ms != RTT_UNKNOWN and reg.listing is not None:
            reg.rtt_ms = body.rtt_ms
            self.federation.locations.reported_rtt(PublicKey(reg.key), body.rtt_ms, inb.now)
        self._reply(inb, HeartbeatAck(body.seq, HeartbeatStatus.OK, self.epoch))

    def _move(self, reg: Registration, addr: Addr, now: float) -> None:
        """The peer's NAT gave it a new (proven) address: move it and its sessions."""
        log.info(
            "peer %s moved from %s to %s",
            PublicKey(reg.key).short(),
            endpoint_str(reg.addr),
            endpoint_str(addr),
        )
        for s in self.table.move(reg, addr):
            self._close(s, CloseReason.PEER_GONE, {s.a_key, s.b_key}, now)
        if self.ports is not None:
            for sid in reg.sessions:
                found = self.table.find(sid)
                if found is not None:
                    self.ports.moved(found)

    def _evict(self, victim: Registration, now: float) -> None:
        log.info(
            "registration table full: evicting idle peer %s (%s)",
            PublicKey(victim.key).short(),
            victim.source,
        )
        self.stats.quota_hits["evicted"] += 1
        notice = Error(ErrorCode.RESOURCE_LIMIT, MsgType.REGISTER, "evicted: relay full")
        self._send(notice, victim, now)
        self._drop_registration(victim, Status.TARGET_UNREACHABLE, now)

    # ------------------------------------------------------------ sessions

    def _handle_connection_request(self, inb: Inbound, body: ConnectionRequest) -> None:
        now = inb.now
        rid = body.request_id
        key = inb.key
        target = body.target.raw

        def respond(status: Status, sid: bytes = bytes(SESSION_ID_LEN)) -> None:
            self._reply(inb, self._response(rid, status, sid, self._port_of(sid, key)))

        reg = self._requester(inb, body.TYPE)
        if reg is None:
            return
        refused = self._target_refusal(key, target)
        if refused is not None:
            respond(refused)
            return
        s = self.table.by_pair.get(pair_of(key, target))
        if s is not None:
            if s.sid in self.sessions:
                respond(Status.SUCCESS, s.sid)
            elif key == s.b_key:
                # B asks for A while A's offer to B is outstanding: both want it
                s.waiters[key] = rid
                self._establish(s, now)
            else:
                s.waiters[key] = rid  # a retransmitted request: answer when B does
            return
        treg = self.table.regs.get(target)
        if treg is None or not treg.accept_incoming:
            respond(Status.TARGET_UNREACHABLE)
            return
        if treg.addr == reg.addr:
            # both behind one address: the relay cannot tell their packets apart
            self._drop(inb, DropReason.BAD_ADDRESS)
            respond(Status.ERROR)
            return
        refusal, displaces = self._admit_session(reg, treg)
        if refusal is not None:
            self.stats.quota_hits[refusal.value] += 1
            if refusal is Refusal.BUDGET and self.table.budget is not None:
                # the status alone cannot say why, nor until when
                detail = self.table.budget.spent_detail()
                self._admission.notice(inb, Error(ErrorCode.RESOURCE_LIMIT, body.TYPE, detail))
            respond(Status.RESOURCE_LIMIT)
            return
        s = self.table.open(self._new_session_id(), reg, treg, now)
        if displaces is not None:  # its slot once the target accepts
            self.table.claim(s.sid, displaces)
        if self.ports is not None:
            self.ports.open(s)
        s.waiters[key] = rid
        self._send_offer(s, treg, now)

    def _admit_session(
        self, a: Registration, b: Registration
    ) -> tuple[Refusal | None, Displacement | None]:
        """The table's quotas; at ``max_connections``, a request with more
        credit claims the slot of a session with less (contention.py's rule):
        (refusal, the claim to record on the new session)."""
        refusal = self.table.admit_session(a, b)
        if refusal is not Refusal.MAX_CONNECTIONS:
            if refusal is None:
                self.contention.count("admitted_free_slot")
            return refusal, None
        table = self.table
        busy = list(self.sessions.values()) + list(table.pending.values())
        taken = self.contention.victim(busy, a.key, b.key, self.config, table.claims)
        if taken is None:
            self.contention.count("refused_full")
            return refusal, None  # (as without credit: no one to displace)
        # the other quotas too: a slot claimed for a request they refuse
        # would end a session for nothing
        config = self.config
        table.config = replace(config, max_connections=config.max_connections + 1)
        try:
            other = table.admit_session(a, b)
        finally:
            table.config = config
        if other is not None:
            return other, None
        return None, taken

    def _displace(self, s: Session, now: float) -> None:
        """``s`` is established: the session whose slot it claimed ends."""
        taken = self.table.unclaim(s.sid)
        victim = self.table.find(taken.victim) if taken is not None else None
        if taken is None or victim is None:
            return  # no claim, or its victim left first (its slot is free)
        log.info(
            "relay full: session %s gives its slot to %s (%s <-> %s, %s)",
            victim.sid.hex(),
            s.sid.hex(),
            PublicKey(s.a_key).short(),
            PublicKey(s.b_key).short(),
            taken.reason,
        )
        if victim.sid in self.table.pending:
            self._answer_waiters(victim, Status.RESOURCE_LIMIT, now)
        self._close(victim, CloseReason.PREEMPTED, {victim.a_key, victim.b_key}, now)
        self.contention.count(f"displaced_{taken.reason}")
        self.contention.count(f"admitted_{taken.reason}")

    def offload_rate(self, pair: PortPair) -> int:
        """The kernel path's per-direction limit (bytes/s, 0: none): the
        configured cap, or the session's share under contention."""
        default = self.config.max_bandwidth_kbps * 1000
        return self.contention.kernel_rate(pair.session, default)

    def _send_offer(self, s: Session, treg: Registration, now: float) -> None:
        s.offer_next = now + self.config.offer_retransmit_s
        offer = SessionOffer(s.sid, PublicKey(s.a_key), self._port_of(s.sid, s.b_key))
        self._send(offer, treg, now)

    def _port_of(self, sid: bytes, key: bytes) -> int:
        """The session port of ``key``'s side (0: none, framed only)."""
        pair = self.ports.by_sid.get(sid) if self.ports is not None else None
        if pair is None:
            return 0
        side = pair.a if key == pair.a.key else pair.b
        return 0 if is_stream_addr(side.reg_addr) else side.port  # TCP/TLS: framed

    def _response(self, rid: int, status: Status, sid: bytes, port: int = 0) -> ConnectionResponse:
        return ConnectionResponse(
            request_id=rid,
            status=status,
            session_id=sid,
            idle_timeout_s=self.config.session_idle_timeout_s,
            max_bandwidth_kbps=self.config.max_bandwidth_kbps,
            port=port,
        )

    def _new_session_id(self) -> bytes:
        while True:
            sid = self._rng(SESSION_ID_LEN)
            if self.table.new_id_free(sid):
                return sid

    def _establish(self, s: Session, now: float) -> None:
        self._displace(s, now)
        self.table.establish(s, now)
        self.contention.established(s, self.config, now)
        if self.ports is not None:
            self.ports.establish(s.sid)
        self.stats.sessions_opened += 1
        log.info("session %s open: %s <-> %s", s.sid.hex(), self._who(s.a_key), self._who(s.b_key))
        self._answer_waiters(s, Status.SUCCESS, now)

    def _who(self, key: bytes) -> str:
        """A session side's key as the log shows it."""
        return PublicKey(key).short()

    def _answer_waiters(self, s: Session, status: Status, now: float) -> None:
        sid = s.sid if status == Status.SUCCESS else bytes(SESSION_ID_LEN)
        for wkey, rid in s.waiters.items():
            wreg = self.table.regs.get(wkey)
            if wreg is not None:
                port = self._port_of(sid, wkey) if status == Status.SUCCESS else 0
                self._send(self._response(rid, status, sid, port), wreg, now)
        s.waiters.clear()

    def _handle_session_answer(self, inb: Inbound, body: SessionAnswer) -> None:
        s = self.table.pending.get(body.session_id)
        if s is None:
            est = self.sessions.get(body.session_id)
            if est is not None and inb.key in (est.a_key, est.b_key):
                return  # a retransmitted answer; already done
            self._drop(inb, DropReason.UNKNOWN_SESSION)
            if body.accept:  # accepted too late: make sure the peer drops it
                self._reply(inb, SessionClose(body.session_id, CloseReason.NORMAL))
            return
        if inb.key != s.b_key:
            self._drops[DropReason.UNEXPECTED] += 1
            return
        if body.accept:
            self._establish(s, inb.now)
        else:
            log.info("session %s rejected by %s", s.sid.hex(), PublicKey(inb.key).short())
            self._answer_waiters(s, Status.REJECTED, inb.now)
            self._remove(s)

    def _handle_session_hold(self, inb: Inbound, body: SessionHold) -> None:
        s = self.sessions.get(body.session_id)
        if s is None or inb.key not in (s.a_key, s.b_key):
            self._drop(inb, DropReason.UNKNOWN_SESSION)
            return
        if self.ports is None or s.ports is None:
            return  # no ports: nothing is delivered to one anyway
        until = inb.now + body.hold_s if body.hold_s else 0.0
        self.ports.hold(s.ports, inb.key == s.a_key, until)

    def _handle_punch(self, inb: Inbound, body: Punch) -> None:
        """A side asks for a coordinated direct try: both sides hear GO at
        once, each with its own and the peer's WireGuard mapping (what the
        session ports latched to), and point WireGuard at the peer's."""
        s = self.sessions.get(body.session_id)
        if s is None or inb.key not in (s.a_key, s.b_key):
            self._drop(inb, DropReason.UNKNOWN_SESSION)
            return
        pair = s.ports
        if pair is None or pair.a.latched is None or pair.b.latched is None or pair.leg:
            self._drop(inb, DropReason.PUNCH_NOT_READY)
            return
        if inb.now - pair.punched_at < PUNCH_INTERVAL_S:
            self._drop(inb, DropReason.PUNCH_TOO_SOON)
            return
        pair.punched_at = inb.now
        self.stats.punches += 1
        if self.ports is not None:
            # both sides are about to point WireGuard elsewhere: deliver
            # nothing to their ports meanwhile (a packet from us would make
            # WireGuard roam back). Their own SESSION_HOLD would arrive a
            # trip later; their resume ends this one early
            for side_a in (True, False):
                self.ports.hold(pair, side_a, inb.now + PUNCH_HOLD_S)
        self._tell_pair(s, body.nonce, True, inb.now)

    def tell_mappings(self, now: float) -> None:
        """Sessions whose WireGuard mappings became known or changed: both
        sides hear them (candidates for their next direct try)."""
        ports = self.ports
        if ports is None:
            return
        for pair in ports.mapped.values():
            s = pair.session
            if s.sid in self.sessions and pair.a.latched and pair.b.latched and not pair.leg:
                self._tell_pair(s, 0, False, now)
        ports.mapped.clear()

    def _tell_pair(self, s: Session, nonce: int, go: bool, now: float) -> None:
        pair = s.ports
        if pair is None:
            return
        a, b = pair.a, pair.b
        for key, mine, theirs in ((s.a_key, a, b), (s.b_key, b, a)):
            reg = self.table.regs.get(key)
            if reg is not None and mine.latched is not None and theirs.latched is not None:
                eps = (mine.latched[:2], theirs.latched[:2])
                body = Punch(s.sid, nonce, go, eps, mine.mapping, theirs.mapping)
                self._send(body, reg, now)

    def _handle_session_close(self, inb: Inbound, body: SessionClose) -> None:
        s = self.table.find(body.session_id)
        if s is None or inb.key not in (s.a_key, s.b_key):
            self._drops[DropReason.UNKNOWN_SESSION] += 1
            return
        if s.sid in self.table.pending:
            self._answer_waiters(s, Status.REJECTED, inb.now)
        self._close(s, body.reason, {s.other(inb.key)}, inb.now)

    def _remove(self, s: Session) -> None:
        self.contention.forget(s.sid)
        if self.ports is not None:
            self.ports.close(s.sid)
        if self.table.remove(s):
            self.stats.sessions_closed += 1
            self._closed_packets += s.packets
            self._closed_bytes += s.bytes

    def _close(self, s: Session, reason: CloseReason, notify: set[bytes], now: float) -> None:
        log.info("session %s closed (%s)", s.sid.hex(), reason.name.lower())
        self._remove(s)
        for k in notify:
            reg = self.table.regs.get(k)
            if reg is not None:
                self._send(SessionClose(s.sid, reason), reg, now)

    # ------------------------------------------------------------ expiry, policy changes, shutdown

    def _housekeeping(self, now: float) -> None:
        table = self.table
        for reg in [r for r in table.regs.values() if r.expires <= now]:
            log.info("peer %s registration expired", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.TARGET_UNREACHABLE, now)
        for s in list(table.pending.values()):
            if now >= s.offer_deadline:
                log.info("session %s: no answer from target", s.sid.hex())
                self._answer_waiters(s, Status.TARGET_UNREACHABLE, now)
                self._close(s, CloseReason.PEER_GONE, {s.b_key}, now)
            elif now >= s.offer_next:
                treg = table.regs.get(s.b_key)
                if treg is not None:
                    self._send_offer(s, treg, now)
        if self.count_budget(now):
            self._budget_changed(now)
        idle = self.config.session_idle_timeout_s
        for s in list(self.sessions.values()):
            if s.packets != s.last_packets:
                s.last_packets = s.packets
                s.last_active = now
            elif now - s.last_active >= idle:
                self._close(s, CloseReason.IDLE, {s.a_key, s.b_key}, now)
        moved = self.contention.rebalance(self.sessions, self.config, now)
        if self.ports is not None:
            for s in moved:  # re-installed in the kernel at the new share
                pair = s.ports
                if pair is not None and pair.offloaded:
                    pair.kernel_seen = (0, 0, 0, 0, 0)  # (its counters start again)
                    self.ports.changes.append(PathChange(pair.a.port, pair))

    def get_stats(self) -> RelayStats:
        st = super().get_stats()
        rep = self.contention.report
        st.contention = dict(rep.counts)
        st.contention["contended"] = int(rep.contended)
        st.contention["demand_bytes_per_s"] = int(rep.demand)
        st.contention["used_bytes_per_s"] = int(rep.used)
        st.capacity_bytes_per_s = self.config.capacity_bytes_per_s
        return st

    def _budget_changed(self, now: float) -> None:
        """What is left of the budget moved by a point: tell the federation
        now (agents steer by it). Spent: no session goes on (budget.py says
        why sessions are closed rather than left to finish)."""
        meter = self.table.budget
        if meter is not None and meter.spent:
            n = len(self.sessions) + len(self.table.pending)
            log.warning("%s: closing its %d sessions", meter.spent_detail(), n)
            for s in list(self.table.pending.values()):
                self._answer_waiters(s, Status.RESOURCE_LIMIT, now)
            for s in list(self.sessions.values()) + list(self.table.pending.values()):
                self._close(s, CloseReason.SHUTDOWN, {s.a_key, s.b_key}, now)
        raw = self.announcement(now)
        if raw is not None:
            self.federation.set_own(raw)

    def _drop_registration(self, reg: Registration, pending_answer: Status, now: float) -> None:
        """Forget a peer: its sessions end (the other end is told, a requester
        still waiting gets ``pending_answer``)."""
        for sid in list(reg.sessions):
            s = self.table.find(sid)
            if s is not None:
                if sid in self.table.pending:
                    self._answer_waiters(s, pending_answer, now)
                self._close(s, CloseReason.PEER_GONE, {s.other(reg.key)}, now)
        self.table.remove_registration(reg)
        self._admission.remember_key(reg.key, reg.ks)
        self.federation.peer_gone(PublicKey(reg.key))

    def policy_changed(self, now: float) -> None:
        """Drop registrations and sessions of keys the policy no longer allows.

        Called by the shell after a policy refresh."""
        for reg in [r for r in self.table.regs.values() if not self.policy.allows(r.key)]:
            log.info("peer %s no longer allowed", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.AUTH_FAILED, now)

    def shutdown(self, now: float) -> None:
        """Tell every session and registration that the relay is going away."""
        self._shutting_down = True
        table = self.table
        for s in list(table.pending.values()):
            self._answer_waiters(s, Status.ERROR, now)
        for s in list(self.sessions.values()) + list(table.pending.values()):
            self._close(s, CloseReason.SHUTDOWN, {s.a_key, s.b_key}, now)
        for reg in table.regs.values():
            self._send(Error(ErrorCode.SHUTTING_DOWN, 0, "relay shutting down"), reg, now)
