"""A relay link that also asks for private sessions (sans-I/O; relay/private_legs.py
has the protocol's story).

Asking: ``request_private(peer, exit_relay)`` marks the peer private at this
link (its entry relay) and sends CONNECTION_REQUEST_SEALED: the exit relay in
clear, the peer sealed to the exit relay, our key sealed to the peer. From
then on every request for that peer at this link is sealed, retransmissions
and the re-requests after the relay forgets us included: no plain
CONNECTION_REQUEST ever names it here. The answer is an ordinary
CONNECTION_RESPONSE. A plain request for a peer the agent's --private rule
covers (``covers``) that has no exit relay here is never sent: it fails at
once (SessionFailed), whoever asked.

Being asked: SESSION_OFFER_SEALED carries a box only we open. It is accepted
only if it opens, names this relay as the exit relay (no other relay can
offer a box it was handed), is within the window of our clock and not a box
we saw under another session, and names one of our own WireGuard peers (the
same rule as a plain offer). Anything else is declined, and counted.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from wgrelay.client.events import SessionFailed
from wgrelay.client.link import RelayLink
from wgrelay.errors import InvalidKey, RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import CloseReason, MsgType, Status
from wgrelay.proto.messages import Body, SessionAnswer
from wgrelay.proto.sealed import (
    ConnectionRequestSealed,
    SealedReplays,
    SessionOfferSealed,
    open_for_peer,
    seal_request,
)

log = logging.getLogger(__name__)

_ANSWERS_KEPT = 64
"""Offers whose answer we repeat if the relay repeats the offer."""
_PRIVATE_SIDS_KEPT = 4096
"""Private sessions remembered (as many as the receipt signer's meters)."""


def _nobody(_peer: PublicKey) -> bool:
    return False


class PrivateLink(RelayLink):
    def __init__(self, private_key: PrivateKey, *args: Any, **kwargs: Any) -> None:
        super().__init__(private_key, *args, **kwargs)
        self._private_key = private_key
        self.private_exit: dict[PublicKey, PublicKey] = {}
        """Peers asked for privately here, and the exit relay of each."""
        self.covers: Callable[[PublicKey], bool] = _nobody
        """The agent's --private rule (the planner sets it): a peer it covers
        is never named in a plain CONNECTION_REQUEST on this link."""
        self._seen = SealedReplays()
        self._answered: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        """session id -> (box digest, our answer)."""
        self._private_sids: OrderedDict[bytes, None] = OrderedDict()
        """Sessions of private paths here, asked or offered (no receipts)."""
        self.declined: dict[str, int] = {}
        """Private offers declined, by why (handled, so not drops): not_peer,
        undecryptable, malformed, wrong_relay, stale, replayed."""

    def _handler_table(self) -> dict[type[Body], Callable[[Any, float], None]]:
        table = super()._handler_table()
        table[SessionOfferSealed] = self._on_session_offer_sealed
        return table

    # ------------------------------------------------------------ asking

    def request_private(self, peer: PublicKey, exit_relay: PublicKey, now: float) -> int:
        """Ask this relay (the entry) for a session to ``peer`` through
        ``exit_relay``, naming ``peer`` to the exit relay only."""
        self.private_exit[peer] = exit_relay
        return self.request_session(peer, now)

    def request_session(self, peer: PublicKey, now: float, via: PublicKey | None = None) -> int:
        exit_relay = self.private_exit.get(peer)
        if exit_relay is None and self.covers(peer):
            # fail closed here too: whichever caller asks (a re-request after
            # the planner's state moved on), a plain request would name the
            # peer to this relay. The failure sends the planner to its
            # private rules (the next pair, or no relayed path)
            return self._fail(peer, "no plain request for a private peer")
        if exit_relay is None:
            return super().request_session(peer, now, via)
        self.wanted.add(peer)
        self.via.pop(peer, None)
        for key, req in list(self._requests.items()):
            if key[0] == MsgType.CONNECTION_REQUEST and req.peer == peer:
                body = req.body
                if isinstance(body, ConnectionRequestSealed) and body.exit_relay == exit_relay:
                    return body.request_id
                del self._requests[key]  # asked another way before
        issued_ms = int(self._wall(now) * 1000)
        try:
            box = seal_request(PublicKey(self._pub), peer, exit_relay, issued_ms)
        except InvalidKey as e:  # a low-order WireGuard peer key (a bad config)
            return self._fail(peer, str(e))
        rid = self._new_id()
        self._start(ConnectionRequestSealed(rid, exit_relay, box), rid, now, peer=peer)
        # filed as a CONNECTION_REQUEST: its answer, expiry and cancelling
        # are that request's
        req = self._requests.pop((MsgType.CONNECTION_REQUEST_SEALED, rid))
        self._requests[(MsgType.CONNECTION_REQUEST, rid)] = req
        return rid

    def _fail(self, peer: PublicKey, why: str) -> int:
        """No request goes out for ``peer``: it fails at once (request id 0)."""
        log.warning("relay %s: peer %s: %s", self.relay_key.short(), peer.short(), why)
        self.wanted.discard(peer)
        self.via.pop(peer, None)
        self._events.append(SessionFailed(peer, Status.ERROR))
        return 0

    def close_session(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        self.private_exit.pop(peer, None)
        super().close_session(peer, now, reason)

    def forget_wanted(self, peer: PublicKey) -> None:
        self.private_exit.pop(peer, None)
        super().forget_wanted(peer)

    def _bind(self, peer: PublicKey, sid: bytes, incoming: bool, port: int) -> None:
        super()._bind(peer, sid, incoming, port)
        if peer in self.private_exit or self.covers(peer):
            self._remember_private(sid)

    def _remember_private(self, sid: bytes) -> None:
        self._private_sids[sid] = None
        while len(self._private_sids) > _PRIVATE_SIDS_KEPT:
            self._private_sids.popitem(last=False)

    def _private_session(self, session_id: bytes) -> bool:
        return session_id in self._private_sids

    # ------------------------------------------------------------ being asked

    def _on_session_offer_sealed(self, body: SessionOfferSealed, now: float) -> None:
        sid = body.session_id
        try:
            opened = open_for_peer(body.sealed, self._private_key)
        except RemoteProtocolError as e:
            self._decline(sid, e.reason, now)
            return
        before = self._answered.get(sid)
        if before is not None and before[0] == opened.digest:
            # the relay repeats its offer (our answer was lost): the same answer
            self._send(SessionAnswer(sid, before[1]), now)
            return
        if opened.exit_relay != self.relay_key:
            self._decline(sid, "wrong_relay", now)
            return
        why = self._seen.check(opened.digest, opened.issued_ms, int(self._wall(now) * 1000))
        if why is not None:
            self._decline(sid, why, now, opened.digest)
            return
        accept = self._accept_offer(opened.initiator)
        self._remember(sid, opened.digest, accept)
        self._send(SessionAnswer(sid, accept), now)
        if accept:
            self._bind(opened.initiator, sid, incoming=True, port=body.port)
            self._remember_private(sid)
        else:
            self._count("not_peer")
            log.info(
                "relay %s: declined a private session from %s (not our peer)",
                self.relay_key.short(),
                opened.initiator.short(),
            )

    def _decline(self, sid: bytes, why: str, now: float, digest: bytes = b"") -> None:
        self._count(why)
        if digest:
            self._remember(sid, digest, False)
        log.info("relay %s: declined a private offer (%s)", self.relay_key.short(), why)
        self._send(SessionAnswer(sid, False), now)

    def _count(self, why: str) -> None:
        self.declined[why] = self.declined.get(why, 0) + 1

    def _remember(self, sid: bytes, digest: bytes, accept: bool) -> None:
        self._answered[sid] = (digest, accept)
        while len(self._answered) > _ANSWERS_KEPT:
            self._answered.popitem(last=False)
