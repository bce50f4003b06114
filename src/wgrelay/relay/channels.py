"""Our side of the control channels a relay opens to other relays (sans-I/O).

When relay R talks to relay S (gossip, anti-entropy, probes, location records,
a lookup on a peer's behalf) R is the *client* of an ordinary control channel:
``crypto_kx`` between R's and S's X25519 forms, R's messages sealed with its
client key, S's answers carrying FROM_SERVER. A ``RelayChannel`` holds R's
half: the keys, strictly increasing timestamps, a replay window for S's
answers, and S's cookie. S treats R's address like any other: until R echoes a
cookie S sent there, S answers only with cookie replies, so the channel keeps
the last messages it sent by nonce and repeats the one a cookie refers to.

Requests are not retransmitted here: gossip is repaired by anti-entropy,
probes have their own timeouts and fallbacks, and a lookup gives up after its
deadline. Any authenticated answer is also a sign that S is alive.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError, StaleTimestamp
from wgrelay.keys import PublicKey, RelayIdentity, relay_x25519_public
from wgrelay.proto.constants import COOKIE_ECHO_LEN, NONCE_LEN
from wgrelay.proto.cookie import CookieReply
from wgrelay.proto.envelope import (
    ControlHeader,
    ReplayWindow,
    Timestamper,
    check_skew,
    derive_client_keys,
    open_control,
    seal_control,
)
from wgrelay.proto.messages import Body, RelayMessage

COOKIE_LIFETIME_S = 100.0
"""A relay accepts its cookies for one or two rotations (120-240 s)."""
REMEMBERED_NONCES = 16


class RelayChannel:
    def __init__(
        self,
        identity: RelayIdentity,
        peer: PublicKey,
        addr: Endpoint,
        rng: Callable[[int], bytes] = os.urandom,
        drops: dict[str, int] | None = None,
    ) -> None:
        self.peer = peer
        self.addr = addr
        self.peer_x25519 = relay_x25519_public(peer)
        self._own_x = identity.x25519_public
        self._keys = derive_client_keys(
            identity.x25519_public, identity.x25519_private, self.peer_x25519
        )
        self._rng = rng
        self._ts = Timestamper()
        self._replay = ReplayWindow()
        self._cookie: tuple[bytes, float] | None = None
        self._sent: OrderedDict[bytes, Body] = OrderedDict()
        self.drops: dict[str, int] = drops if drops is not None else {}
        """Answers refused, by reason; shared by all of a relay's channels
        (a channel is replaced when its relay moves: counts must not go back)."""

    def seal(self, body: Body, now: float, wall: float) -> bytes:
        cookie = None
        if self._cookie is not None:
            if now - self._cookie[1] < COOKIE_LIFETIME_S:
                cookie = self._cookie[0]
            else:
                self._cookie = None
        nonce = self._rng(NONCE_LEN)
        self._sent[nonce[:COOKIE_ECHO_LEN]] = body
        if len(self._sent) > REMEMBERED_NONCES:
            self._sent.popitem(last=False)
        return seal_control(
            body,
            sender=self._own_x,
            keys=self._keys,
            timestamp_us=self._ts.next(wall),
            nonce=nonce,
            cookie=cookie,
        )

    def open(self, hdr: ControlHeader, data: bytes, wall: float) -> RelayMessage | None:
        """An answer from the peer relay (FROM_SERVER), or None (counted)."""
        try:
            ts, body = open_control(data, hdr, self._keys)
            try:
                check_skew(ts, wall)
            except StaleTimestamp:
                # relays keep their clocks; we take its word only for what it
                # says, never to move our timestamps (we are not its client)
                self.drop("stale_timestamp")
                return None
            self._replay.accept(ts)
        except RemoteProtocolError as e:
            self.drop(e.reason)
            return None
        return body

    def on_cookie(self, reply: CookieReply, now: float, wall: float) -> bytes | None:
        """The peer relay wants proof of our address: repeat the message with it."""
        body = self._sent.pop(reply.echo, None)
        if body is None:
            self.drop("unsolicited_cookie")
            return None
        self._cookie = (reply.cookie, now)
        return self.seal(body, now, wall)

    def sent_nonce(self, echo: bytes) -> bool:
        return echo in self._sent

    def sent_body(self, echo: bytes) -> Body | None:
        """The message a cookie reply with ``echo`` refers to (None: not ours)."""
        return self._sent.get(echo)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
