"""What a control datagram must get through before a handler sees it (sans-I/O).

Processing order (docs/PROTOCOL.md section 7), cheapest and least trusting first:

1. Structure (type, version, size, flags): no crypto.
2. Per-source budget: a fixed-size table of token buckets keyed by IPv4
   address or IPv6 /64 (one host usually owns a whole /64). A registered peer
   writing from its registered address skips it: its cheap messages must not
   compete with unknown senders that share its public IP (CGNAT, an office);
   forged copies of its header cost one failed decryption each and nothing else.
3. Keys: cached for registered and recently seen senders; otherwise, above
   ``handshakes_before_cookies`` public-key operations a second, a sender
   without a valid cookie gets a 26-byte cookie reply and no X25519 work.
4. Decrypt (authenticates sender and relay), access policy, clock skew,
   replay window, per-key budget.

The outcome is an ``Inbound`` (the message and what is known about its sender)
or nothing (dropped and counted by reason). Along the way a sender may be told,
at most once a second, why it was refused (stale clock, replayed timestamp,
rate limit) so an honest peer can recover instead of being locked out silently.

**Proven addresses.** ``Inbound.proven`` says whether the sender has shown that
it receives at the source address: it is registered from exactly that address,
or its message carries a cookie bound to its key and that address (a cookie is
only ever sent to the address it names). An unproven address gets nothing but
a cookie reply, whatever it asked (``reply``): a forged source address can only
ever receive cookies, each smaller than the datagram that caused it, and an
honest sender pays one round trip per new address (its link repeats the
message with the cookie and keeps using it).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wgrelay.endpoint import Endpoint
from wgrelay.errors import AuthenticationFailed, RemoteProtocolError
from wgrelay.proto.constants import (
    MAX_DETAIL_LEN,
    NONCE_LEN,
    RELAY_TO_RELAY,
    SESSION_ID_LEN,
    ErrorCode,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import CookieJar, encode_cookie_reply
from wgrelay.proto.envelope import (
    MAX_CLOCK_SKEW_S,
    ChannelKeys,
    ControlHeader,
    ReplayWindow,
    Timestamper,
    derive_server_keys,
    open_control,
    parse_control_header,
    seal_control,
)
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    Error,
    RelayMessage,
)
from wgrelay.relay.access import AccessPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.limits import KeyedRateLimiter, TokenBucket, WindowCounter
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

_RELAY_SPEECH = frozenset(RELAY_TO_RELAY) | {MsgType.PING, MsgType.DISCOVERY_QUERY}
"""What another relay may send us as a relay (not as a member of our mesh)."""

Addr = tuple[Any, ...]
"""A socket address exactly as recvfrom returned it (2-tuple IPv4, 4-tuple IPv6)."""

NOTICE_INTERVAL_S = 1.0
"""At most one refusal notice (rate limit, stale clock, replay) per sender a second."""


def source_group(addr: Addr) -> str:
    """The budget a source address draws on: its IPv4 address or IPv6 /64."""
    host = str(addr[0])
    if ":" not in host:
        return host
    try:
        net = ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False)
    except ValueError:
        return host
    return str(net.network_address)


@dataclass(slots=True)
class KeyState:
    """Per-sender crypto state: derived keys, replay window, control budget."""

    keys: ChannelKeys
    replay: ReplayWindow
    limiter: TokenBucket
    last_notice: float = -1e9


@dataclass(slots=True)
class Inbound:
    """An authenticated control message, with what is known about its sender."""

    ks: KeyState
    key: bytes
    body: RelayMessage
    msg_type: MsgType
    addr: Addr
    now: float
    ts: int
    newer: bool
    """The timestamp is newer than every message accepted from this key before
    (only such a message may move a registration to another address)."""
    proven: bool
    size: int
    echo: bytes
    """The first 8 bytes of the request's nonce (echoed by a cookie reply)."""
    member: bool = True
    """Allowed by the access policy. A non-member reaches a handler only with a
    DISCOVERY_QUERY for the public relay list (announcements are public)."""
    dropped: bool = False
    """Counted under a drop reason already: a cookie sent instead of its
    answer must not count it a second time (one reason per datagram)."""


class Admission:
    def __init__(
        self,
        server_public: bytes,
        server_private: bytes,
        config: RelayConfig,
        policy: AccessPolicy,
        stats: RelayStats,
        out: list[tuple[bytes, Addr]],
        now: float,
        wall: Callable[[float], float],
        rng: Callable[[int], bytes],
    ) -> None:
        self._pub = server_public
        self._priv = server_private
        self.config = config
        self.policy = policy
        self.stats = stats
        self._drops = stats.drops
        self._out = out
        self._wall = wall
        self._rng = rng
        self.timestamper = Timestamper()
        self.cookies = CookieJar(now, rng=rng)
        self._handshakes = WindowCounter()
        self._sources: KeyedRateLimiter[str] = KeyedRateLimiter(
            config.control_rate_per_ip, config.control_burst_per_ip, config.rate_table_size
        )
        self.key_cache: OrderedDict[bytes, KeyState] = OrderedDict()
        """Senders that are not registered (recently seen, or their registration
        ended): keys and, above all, replay windows outlive registrations."""

    # ------------------------------------------------------------ the pipeline

    def admit(
        self,
        data: bytes,
        addr: Addr,
        now: float,
        registered: Callable[[bytes], tuple[KeyState, Addr] | None],
        relay_endpoints: Callable[[bytes], tuple[Endpoint, ...] | None] = lambda _key: None,
    ) -> Inbound | None:
        """``relay_endpoints(sender)``: the announced endpoints of a known relay
        (None for anyone else)."""
        self.stats.control_received += 1
        try:
            hdr = parse_control_header(data)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return None
        sender = hdr.sender.raw
        reg = registered(sender)
        relay_eps = relay_endpoints(sender)
        # a registered peer at its registered address, or a known relay at one
        # of its announced endpoints, has its own budget (per key, after
        # decryption): neighbours behind the same public IP cannot starve it.
        # Only the first is also a proven address: a relay may announce any
        # address, so answers to a relay still need its cookie.
        at_home = reg is not None and reg[1] == addr
        exempt = at_home or (relay_eps is not None and (addr[0], addr[1]) in relay_eps)
        if not exempt and not self._sources.allow(source_group(addr), now):
            self._drops[DropReason.RATE_LIMITED_IP] += 1
            return None
        ks = reg[0] if reg is not None else self.key_cache.get(sender)
        cookie_ok: bool | None = None  # computed once, when first needed
        if ks is not None:
            if reg is None:
                self.key_cache.move_to_end(sender)  # least recently used goes first
            keys = ks.keys
        else:
            if self._handshakes.value(now) >= self.config.handshakes_before_cookies:
                cookie_ok = self._cookie_ok(hdr, addr, now)
                if not cookie_ok:
                    self._drops[
                        DropReason.NEEDS_COOKIE if hdr.cookie is None else DropReason.BAD_COOKIE
                    ] += 1
                    self._send_cookie(sender, hdr.nonce[:8], addr, now, len(data))
                    return None
                self.stats.cookies_accepted += 1
            self._handshakes.add(now)
            self.stats.handshakes += 1
            try:
                keys = derive_server_keys(self._pub, self._priv, sender)
            except RemoteProtocolError as e:
                self._drops[e.reason] += 1
                return None
        try:
            ts, body = open_control(data, hdr, keys)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            if ks is not None and not isinstance(e, AuthenticationFailed):
                # it decrypted, so its known sender really sent a body we cannot
                # read (another version, a bug): say so rather than stay silent
                proven = at_home or self._cookie_ok(hdr, addr, now)
                detail = str(e)[:MAX_DETAIL_LEN]
                self._notice(
                    ks, Error(ErrorCode.MALFORMED, hdr.msg_type, detail),
                    sender, addr, now, proven, len(data), hdr.nonce[:8],
                )  # fmt: skip
            return None
        if cookie_ok is None:
            cookie_ok = self._cookie_ok(hdr, addr, now)
        proven = at_home or cookie_ok
        n = len(data)
        echo = hdr.nonce[:8]
        # other relays are not members of our mesh but of the federation:
        # they pass when we hold their announcement, and a GOSSIP may carry
        # the announcement that introduces its sender (its handler checks).
        # Being a relay opens relay-to-relay speech only (and liveness pings,
        # lookups): never a registration or a session, which only the access
        # policy grants (anyone can sign an announcement)
        relay = relay_eps is not None or hdr.msg_type == MsgType.GOSSIP
        member = self.policy.allows(sender) or (relay and hdr.msg_type in _RELAY_SPEECH)
        public_query = (
            isinstance(body, DiscoveryQuery) and body.locate is None and not member
        )  # (the list of relays is public: their announcements are)
        if not member and not public_query:
            self._drops[DropReason.NOT_ALLOWED] += 1
            self._refuse_not_allowed(hdr, body, keys, sender, addr, now, proven, n, echo)
            return None
        if ks is None:
            ks = KeyState(
                keys=keys,
                replay=ReplayWindow(),
                # a relay speaks for many peers (lookups, records): a larger budget
                limiter=TokenBucket(
                    self.config.control_rate_per_relay
                    if relay
                    else self.config.control_rate_per_key,
                    self.config.control_burst_per_relay
                    if relay
                    else self.config.control_burst_per_key,
                    now,
                ),
            )
            if member:  # a non-member's public query leaves no state behind
                self._cache_keys(sender, ks)
        wall_us = int(self._wall(now) * 1_000_000)
        if abs(ts - wall_us) > MAX_CLOCK_SKEW_S * 1_000_000:
            self._drops[DropReason.STALE_TIMESTAMP] += 1
            self._notice(
                ks, Error(ErrorCode.STALE_TIMESTAMP, hdr.msg_type, "clock skew", wall_us),
                sender, addr, now, proven, n, echo,
            )  # fmt: skip
            return None
        newest = ks.replay.newest
        if newest > wall_us + MAX_CLOCK_SKEW_S * 1_000_000:
            # the window is further ahead than any message may be (our clock
            # stepped back): it would refuse this sender forever
            ks.replay.reset(wall_us)
            newest = wall_us
        try:
            ks.replay.accept(ts)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            self._notice(
                ks, Error(ErrorCode.REPLAYED, hdr.msg_type, "timestamp not new", newest),
                sender, addr, now, proven, n, echo,
            )  # fmt: skip
            return None
        if not ks.limiter.take(1.0, now):
            self._drops[DropReason.RATE_LIMITED_KEY] += 1
            self.stats.quota_hits["control_rate"] += 1
            self._notice(
                ks, Error(ErrorCode.RESOURCE_LIMIT, hdr.msg_type, "control rate limit"),
                sender, addr, now, proven, n, echo,
            )  # fmt: skip
            return None
        return Inbound(
            member=member,
            ks=ks,
            key=sender,
            body=body,
            msg_type=hdr.msg_type,
            addr=addr,
            now=now,
            ts=ts,
            newer=ts > newest,
            proven=proven,
            size=n,
            echo=echo,
        )

    def _cookie_ok(self, hdr: ControlHeader, addr: Addr, now: float) -> bool:
        if hdr.cookie is None:
            return False
        return self.cookies.check(hdr.cookie, hdr.sender.raw, (addr[0], addr[1]), now)

    def _cache_keys(self, key: bytes, ks: KeyState) -> None:
        cache = self.key_cache
        if len(cache) >= self.config.key_cache_size:
            cache.popitem(last=False)
        cache[key] = ks

    def forget_key(self, key: bytes) -> KeyState | None:
        return self.key_cache.pop(key, None)

    def remember_key(self, key: bytes, ks: KeyState) -> None:
        """A registration ended: keep its keys and replay window (a REGISTER
        captured in the last minutes must not register it again)."""
        self._cache_keys(key, ks)

    # ------------------------------------------------------------ replies

    def seal(self, body: Body, keys: ChannelKeys, now: float) -> bytes:
        return seal_control(
            body,
            sender=self._pub,
            keys=keys,
            timestamp_us=self.timestamper.next(self._wall(now)),
            nonce=self._rng(NONCE_LEN),
        )

    def reply(self, inb: Inbound, body: Body) -> None:
        """Answer the sender of ``inb`` at its source address."""
        self._reply(
            body,
            inb.ks.keys,
            inb.key,
            inb.addr,
            inb.now,
            inb.proven,
            inb.size,
            inb.echo,
            count=not inb.dropped,
        )

    def notice(self, inb: Inbound, body: Error) -> None:
        """Tell the sender of a refused message why (at most once a second)."""
        self._notice(inb.ks, body, inb.key, inb.addr, inb.now, inb.proven, inb.size, inb.echo)

    def challenge(self, inb: Inbound) -> None:
        """Ask the sender to prove its address (it repeats the message with the cookie)."""
        self.stats.drops[DropReason.UNPROVEN_ADDRESS] += 1
        self._send_cookie(inb.key, inb.echo, inb.addr, inb.now, inb.size)

    def _reply(
        self,
        body: Body,
        keys: ChannelKeys,
        sender: bytes,
        addr: Addr,
        now: float,
        proven: bool,
        request_size: int,
        echo: bytes,
        count: bool = True,
    ) -> None:
        if not proven:
            # an address that has not shown it wants our answers gets nothing
            # but a cookie (26 bytes, smaller than any request); an honest
            # sender repeats its message with it and gets the real answer
            if count:  # (a refused message was counted under its own reason)
                self._drops[DropReason.UNPROVEN_ADDRESS] += 1
            self._send_cookie(sender, echo, addr, now, request_size)
            return
        self._out.append((self.seal(body, keys, now), addr))
        self.stats.control_sent += 1

    def _send_cookie(
        self, sender: bytes, echo: bytes, addr: Addr, now: float, request_size: int
    ) -> None:
        cookie = self.cookies.make(sender, (addr[0], addr[1]), now)
        data = encode_cookie_reply(echo, cookie)
        ratio = len(data) / request_size
        if ratio > self.stats.largest_unauthenticated_reply_ratio:
            self.stats.largest_unauthenticated_reply_ratio = ratio
        self._out.append((data, addr))
        self.stats.cookies_sent += 1
        self.stats.control_sent += 1

    def _notice(
        self,
        ks: KeyState,
        body: Error,
        sender: bytes,
        addr: Addr,
        now: float,
        proven: bool,
        size: int,
        echo: bytes,
    ) -> None:
        if proven:
            if now - ks.last_notice < NOTICE_INTERVAL_S:
                return
            ks.last_notice = now
        # (unproven: a cookie, bounded by the per-source budget; the notice
        # itself follows once the sender repeats the message with it)
        self._reply(body, ks.keys, sender, addr, now, proven, size, echo, count=False)

    def _refuse_not_allowed(
        self,
        hdr: ControlHeader,
        body: Body,
        keys: ChannelKeys,
        sender: bytes,
        addr: Addr,
        now: float,
        proven: bool,
        size: int,
        echo: bytes,
    ) -> None:
        """A non-member gets an authenticated refusal and no state at all
        (not even a replay window; a replayed message is refused again)."""
        reply: Body
        if isinstance(body, ConnectionRequest):
            reply = ConnectionResponse(body.request_id, Status.AUTH_FAILED, bytes(SESSION_ID_LEN))
        else:
            reply = Error(ErrorCode.AUTH_FAILED, hdr.msg_type)
        self._reply(reply, keys, sender, addr, now, proven, size, echo, count=False)
