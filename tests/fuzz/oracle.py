"""The invariants checked after every input, on both cores.

Relay (``RelayOracle.deliver``), for every datagram, honest or fuzzed:

* no exception escapes ``RelayCore.receive``, and ``internal_error`` stays 0;
* **accounting**: a data frame is forwarded (one output, the same bytes) or
  counted under exactly one drop reason; a control datagram counts one
  ``control_received`` and is either dropped before any handler under exactly
  one reason, or reaches exactly one handler, which may count at most one
  drop. The stats alone cannot give that account: a handled message has no
  counter of its own (its reply bumps ``control_sent``, but so does the
  cookie sent for a dropped one) and some leave nothing at all (a
  retransmitted SESSION_ANSWER for an established session, a retransmitted
  CONNECTION_REQUEST while the offer is out). So the oracle wraps the core's
  handler table and counts handler entries itself. A datagram the core routes
  to its federation before admission (a FROM_SERVER answer or a cookie reply
  to one of its own relay-to-relay channels) counts one ``control_received``
  too and is dropped under exactly one reason (the core's, or its channel's)
  or handled (the federation took the answer, or repeated the message the
  cookie asked for); the oracle wraps those entry points as well. Timers
  count no drop (no datagram was received);
* **return routability**: an address gets nothing but cookie replies (26
  bytes, no larger than the datagram that caused them, at most that many bytes
  in all) unless it is the registered address of the key the message is for,
  before or after the input, or the input came from there with a cookie the
  relay had sent to that key at that address (or a later answer, to an
  address that key proved so before). Every other output is opened with its
  recipient's keys: the relay only ever sends well-formed, sealed messages,
  and data frames only byte for byte to a registered address. What the relay
  asks other relays (as the client of a channel to them) goes only to the
  address the relay's announcement names, sealed for that relay.

Client (``LinkOracle.deliver``): no exception escapes ``RelayLink.receive`` or
``handle_timer``; every input counts one ``received`` and is either dropped
under exactly one reason or reaches exactly one handler (which drops
nothing at datagram level; bad announcements and LOCATION records inside a
response are counted apart, as ``announcement_*`` and ``location_*``); a
cookie reply is dropped or answered by exactly one repeat; everything the
link sends is a well-formed message sealed for the relay; ``sessions`` and
``session_of`` stay inverse maps.

Known bugs (tests/fuzz/test_fuzz_findings.py) are recognised precisely and
counted in ``known`` instead of failing the run, unless ``strict``.
"""

from __future__ import annotations

import struct
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wgrelay.client.link import RelayLink
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import MsgType
from wgrelay.proto.cookie import COOKIE_REPLY_LEN
from wgrelay.proto.envelope import (
    MAX_CLOCK_SKEW_S,
    ChannelKeys,
    ControlHeader,
    derive_client_keys,
    open_control,
    parse_control_header,
)
from wgrelay.proto.location import decode_location
from wgrelay.proto.messages import DiscoveryResponse
from wgrelay.relay.admission import Addr, Inbound
from wgrelay.relay.core import RelayCore

_DATA = int(MsgType.DATA)
_COOKIE = int(MsgType.COOKIE_REPLY)

HostPort = tuple[str, int]


def host_port(addr: Addr) -> HostPort:
    return (str(addr[0]), int(addr[1]))


@dataclass(frozen=True, slots=True)
class Finding:
    core: str
    rule: str
    detail: str
    data: bytes
    src: Addr | None
    now: float
    trace: str = ""

    def __str__(self) -> str:
        where = f" from {self.src}" if self.src is not None else ""
        return (
            f"[{self.core}] {self.rule}: {self.detail}\n  input{where} at now={self.now:.6f}:"
            f" {self.data.hex()}\n{self.trace}"
        )


@dataclass(slots=True)
class Tally:
    """What happened to the inputs of one core."""

    inputs: int = 0
    forwarded: int = 0
    handled: int = 0
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    handlers: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------- known findings
#
# Each recogniser matches one bug reported in test_fuzz_findings.py and
# nothing wider; a fix in src makes it never match again.

ADMISSION_REFUSALS = frozenset({"stale_timestamp", "replayed", "rate_limited_key", "not_allowed"})
HANDLER_REFUSALS = frozenset({"unknown_session", "bad_address"})


def known_relay_miscount(delta: dict[str, int], handled: int) -> str | None:
    """test_a_refusal_answered_with_a_cookie_counts_one_drop and
    test_a_late_session_answer_from_an_unproven_address_counts_one_drop: a
    dropped input whose answer goes to an unproven address, and so becomes a
    cookie, is counted twice: under its reason and as ``unproven_address``."""
    if sum(delta.values()) == 2 and delta.get("unproven_address") == 1:
        (other,) = (r for r in delta if r != "unproven_address")
        if handled == 0 and other in ADMISSION_REFUSALS:
            return f"counted_twice:{other}"
        if handled == 1 and other in HANDLER_REFUSALS:
            return f"counted_twice:{other}"
    return None


DEFERRED = "deferred_cookie"


def known_deferred_cookie(delta: dict[str, int], cookies: int) -> dict[str, int] | None:
    """test_a_deferred_answer_to_an_unproven_address_counts_no_drop: a request
    whose answer comes later (a PROBE_REQUEST from a known relay, a locate the
    relay asks the peer's holders about) from an address its sender has not
    proven is handled, and its answer, when it comes, is replaced by a cookie
    reply and counted as ``unproven_address``: a second count for a handled
    datagram, made while the relay handles another datagram or a timer, and a
    cookie sent where nothing asked for one just then. ``delta`` without
    those counts (None: not this bug). Fixed in d5469df (the sender is
    challenged when its request arrives); kept to name a regression."""
    if cookies == 0 or delta.get("unproven_address", 0) < cookies:
        return None
    rest = dict(delta)
    rest["unproven_address"] -= cookies
    if not rest["unproven_address"]:
        del rest["unproven_address"]
    return rest


LOCATE_RECORD = "locate_record_of_another_peer"


def known_locate_record(
    relay: RelayCore, data: bytes, asked: dict[int, PublicKey], delta: dict[str, int]
) -> bool:
    """test_a_locate_answer_with_another_peers_record_is_no_internal_error: a
    holder answers the relay's locate for P with a valid LOCATION record of
    another peer; the relay stored it under that peer, then looked P's record
    up (``KeyError``). Fixed in fb98684 (refused as ``location_wrong_peer``);
    kept to name a regression."""
    if delta != {"internal_error": 1}:
        return False
    try:
        hdr = parse_control_header(data)
        ident = relay.identity
        keys = derive_client_keys(ident.x25519_public, ident.x25519_private, hdr.sender.raw)
        _, body = open_control(data, hdr, keys)
        if not isinstance(body, DiscoveryResponse) or body.record is None:
            return False
        peer = asked.get(body.query_id)
        return peer is not None and decode_location(body.record).peer != peer
    except RemoteProtocolError:
        return False


def known_link_crash(exc: BaseException, link: RelayLink, now: float) -> str | None:
    """test_a_stale_timestamp_error_near_the_top_of_u64_cannot_break_the_link: the
    relay's clock from an ERROR becomes our timestamp, which no longer fits u64."""
    if isinstance(exc, struct.error) and link._wall(now) * 1_000_000 >= 2**64 - 2**11:
        return "timestamp_overflow"
    return None


def known_link_lockout(link: RelayLink, relay_wall_us: int) -> str | None:
    """test_a_link_follows_the_relay_clock_back: once an authenticated
    STALE_TIMESTAMP moved the link's clock ahead, a later one moving it back
    does not bring its timestamps back (they only ever increase): every
    message is stale at the relay until real time catches up."""
    if link._ts._last - relay_wall_us > MAX_CLOCK_SKEW_S * 1_000_000:
        return "timestamps_stuck_ahead"
    return None


def known_link_maps(dangling: list[PublicKey], missing: list[bytes]) -> str | None:
    """test_a_session_id_offered_twice_leaves_no_dangling_session: a session id
    the link already holds for one peer, bound again for another, leaves the
    first peer pointing at a session that is not its own."""
    if dangling and not missing:
        return "session_id_rebound"
    return None


def _reason_text(delta: dict[str, int]) -> str:
    return ", ".join(f"{k}+{v}" for k, v in sorted(delta.items())) or "none"


def _channel_text(channel: dict[str, int]) -> str:
    return f" ({_reason_text(channel)})" if channel else ""


# ---------------------------------------------------------------- relay


class RelayOracle:
    def __init__(
        self,
        relay: RelayCore,
        client_keys: dict[bytes, ChannelKeys],
        *,
        relay_keys: dict[bytes, ChannelKeys] | None = None,
        strict: bool = False,
    ) -> None:
        self.relay = relay
        self.client_keys = client_keys
        """Sender key -> that party's own channel keys (to open what the relay sends it)."""
        self.relay_keys = relay_keys or {}
        """Another relay's X25519 key -> its side of the channel the fuzzed
        relay opens to it (to open the requests it is sent)."""
        self.strict = strict
        self.tally = Tally()
        self.findings: list[Finding] = []
        self.cookie_book: set[tuple[bytes, bytes, HostPort]] = set()
        """Every cookie the relay sent: (cookie, the key it was for, where it went)."""
        self.cookies: dict[tuple[bytes, HostPort], bytes] = {}
        """The newest cookie per (key, address): what a generator may echo."""
        self.signature: tuple[object, ...] = ()
        """What the last input did (reasons, handler, output types): coverage of outcomes."""
        self.last_known: str | None = None
        """The known bug the last input hit, if any."""
        self.earlier_cookies: Callable[[bytes, bytes, HostPort], bool] | None = None
        """While set, a cookie this check accepts counts as sent by the relay:
        for corpus inputs that carry a cookie from an earlier run of a relay
        with the same secret (the book only knows this run's cookies)."""
        self.relay_addresses: dict[bytes, set[HostPort]] = {}
        """Another relay's X25519 key -> every address it announced first."""
        self.proven: dict[HostPort, set[bytes]] = {}
        """Address -> keys a handled message proved it for (a late answer may go there)."""
        self.deferred: dict[tuple[bytes, HostPort], bytes] = {}
        """(echo, address) -> key of handled messages from unproven addresses
        (known_deferred_cookie: their late answer becomes a cookie)."""
        self._entered: list[int] = []
        self._routed: list[bool] = []
        self._answers: list[str] = []
        """Bodies of answers ``Federation._on_answer`` took."""
        self._offered: list[str] = []
        """Bodies of answers it was handed (taken or not)."""
        self._channel_drops: Counter[str] = Counter()
        self._instrument()

    def _instrument(self) -> None:
        """Count handler entries: the one thing no relay counter tells."""
        handlers = self.relay._handlers
        entered = self._entered
        proven, deferred = self.proven, self.deferred
        for t, fn in list(handlers.items()):

            def counted(
                inb: Inbound, body: Any, _fn: Callable[[Any, Any], None] = fn, _t: int = int(t)
            ) -> None:
                entered.append(_t)
                where = host_port(inb.addr)
                if inb.proven:
                    proven.setdefault(where, set()).add(inb.key)
                else:
                    if len(deferred) >= 4096:
                        del deferred[next(iter(deferred))]
                    deferred[(inb.echo, where)] = inb.key
                _fn(inb, body)

            handlers[t] = counted
        self._instrument_federation()

    def _instrument_federation(self) -> None:
        """What the core routes to its federation before admission: whether it
        did, which answers the federation took, what its channels dropped."""
        relay = self.relay
        fed = relay.federation
        routed, answers, channel_drops = self._routed, self._answers, self._channel_drops
        offered = self._offered
        as_client = relay._receive_as_client
        on_answer = fed._on_answer
        receive_answer = fed.receive_answer
        receive_cookie = fed.receive_cookie

        def routed_as_client(data: bytes, now: float) -> bool:
            routed.append(True)  # (stays so if the federation raises)
            routed[-1] = as_client(data, now)
            return routed[-1]

        def answer_taken(key: PublicKey, body: Any, now: float) -> bool:
            offered.append(type(body).__name__)
            taken: bool = on_answer(key, body, now)
            if taken:  # (else its channel counts it: unexpected)
                answers.append(offered[-1])
            return taken

        def answer_received(hdr: ControlHeader, data: bytes, now: float) -> bool:
            # each channel's counts, or one dict all of them share
            tables = list({id(ch.drops): ch.drops for ch in fed._channels.values()}.values())
            before = [dict(t) for t in tables]
            r = receive_answer(hdr, data, now)
            for table, old in zip(tables, before, strict=True):
                channel_drops.update({f"channel_{k}": v - old.get(k, 0) for k, v in table.items()})
            return r

        def cookie_received(reply: Any, now: float) -> bool:
            r = receive_cookie(reply, now)
            if r:
                answers.append("CookieReply")
            return r

        setattr(relay, "_receive_as_client", routed_as_client)  # noqa: B010
        setattr(fed, "_on_answer", answer_taken)  # noqa: B010
        setattr(fed, "receive_answer", answer_received)  # noqa: B010
        setattr(fed, "receive_cookie", cookie_received)  # noqa: B010

    def _find(
        self, rule: str, detail: str, data: bytes, src: Addr | None, now: float, tb: str = ""
    ) -> None:
        self.findings.append(Finding("relay", rule, detail, bytes(data), src, now, tb))

    # ------------------------------------------------------------ inputs

    def deliver(self, data: bytes, src: Addr, now: float) -> list[tuple[bytes, Addr]]:
        relay = self.relay
        stats = relay.stats
        drops = stats.drops
        before = dict(drops)
        control0 = stats.control_received
        regs0 = {k: r.addr for k, r in relay.table.regs.items()}
        self._note_relay_addresses()
        asked = dict(relay.federation.locations._queries)
        if self.earlier_cookies is not None and len(data) >= 75 and data[2] & 1:
            seen = (bytes(data[59:75]), bytes(data[3:35]), host_port(src))
            if seen not in self.cookie_book and self.earlier_cookies(*seen):
                self.cookie_book.add(seen)  # proof from an earlier run: this run's from now
        self._entered.clear()
        self._routed.clear()
        self._answers.clear()
        self._offered.clear()
        self._channel_drops.clear()
        self.last_known = None
        try:
            relay.receive(data, src, now)
        except Exception as e:
            self._find("no_exception", repr(e), data, src, now, traceback.format_exc())
        out = relay.datagrams_to_send()
        regs1 = {k: r.addr for k, r in relay.table.regs.items()}
        delta = {k: v - before.get(k, 0) for k, v in drops.items() if v != before.get(k, 0)}
        handled = len(self._entered)
        routed = any(self._routed)
        channel = {k: v for k, v in self._channel_drops.items() if v > 0}
        is_data = bool(data) and data[0] == _DATA
        t = self.tally
        t.inputs += 1
        counted = delta
        known: str | None = None
        if routed and not self.strict and known_locate_record(relay, data, asked, delta):
            counted, known = {}, LOCATE_RECORD
        elif delta.get("internal_error"):
            self._find("no_internal_error", _reason_text(delta), data, src, now)
        self._note_relay_addresses()
        asks = not is_data and not routed
        late = self._check_outputs(data, src, now, out, regs0, regs1, is_data, asks)
        if late:
            rest = known_deferred_cookie(delta, late)
            if rest is not None and not self.strict:
                counted, known = rest, DEFERRED
        dropped = sum(counted.values())
        if is_data:
            forwarded = len(out)
            ok = handled == 0 and dropped + forwarded == 1
            t.forwarded += forwarded
        elif routed:
            taken = len(self._answers)
            ok = (
                stats.control_received - control0 == 1
                and handled == 0
                and taken <= 1
                and dropped + sum(channel.values()) + taken == 1
            )
            if taken:
                t.handlers["answer:" + self._answers[0]] += 1
                t.handled += dropped == 0
        else:
            ok = stats.control_received - control0 == 1 and (
                (handled == 0 and dropped == 1) or (handled == 1 and dropped <= 1)
            )
            if handled:
                t.handlers[MsgType(self._entered[0]).name] += 1
                t.handled += dropped == 0
        if not ok and known != LOCATE_RECORD:
            known = known_relay_miscount(counted, handled)
            if known is not None and not self.strict:
                pass
            else:
                known = None
                self._find(
                    "one_reason",
                    f"drops {_reason_text(delta)}{_channel_text(channel)}, handlers {handled},"
                    f" answers {self._answers} of {self._offered}, outputs {len(out)}",
                    data,
                    src,
                    now,
                )
        if known is not None:
            t.known[known] += 1
            self.last_known = known
        t.dropped += dropped > 0 or bool(channel)
        t.reasons.update(counted if known == LOCATE_RECORD else delta)
        t.reasons.update(channel)
        self.signature = (
            is_data,
            routed,
            tuple(sorted(delta)),
            tuple(sorted(channel)),
            tuple(self._entered),
            tuple(self._offered),
            tuple(self._answers),
            tuple(sorted({d[0] for d, _ in out if d})),
        )
        return out

    def _note_relay_addresses(self) -> None:
        """Where the relay may send what it asks another relay: the first
        endpoint of each announcement of it the relay held (a channel keeps
        the address it was opened with until its next use), or its bootstrap
        address."""
        fed = self.relay.federation
        seen = self.relay_addresses
        for m in fed.directory.members():
            if m.announcement.info.endpoints:
                ep = host_port(m.announcement.info.endpoints[0])
                seen.setdefault(m.x25519, set()).add(ep)
        for key, ep in fed._bootstrap.items():
            ch = fed._channels.get(key)
            if ch is not None:
                seen.setdefault(ch.peer_x25519, set()).add(host_port(ep))

    def _check_outputs(
        self,
        data: bytes,
        src: Addr | None,
        now: float,
        out: list[tuple[bytes, Addr]],
        regs0: dict[bytes, Addr],
        regs1: dict[bytes, Addr],
        is_data: bool,
        asks: bool = False,
    ) -> int:
        """Check what the relay sent; the number of late cookies
        (known_deferred_cookie). ``asks``: the input is a request the relay
        may answer now (anything else it sends is a late answer)."""
        if not out:
            return 0
        sender = bytes(data[3:35]) if len(data) >= 35 else b""
        hp = host_port(src) if src is not None else None
        cookie = bytes(data[59:75]) if len(data) >= 75 and data[2] & 1 else None
        proven = hp is not None and cookie is not None and (cookie, sender, hp) in self.cookie_book
        cookie_bytes = 0
        late = 0
        for d, dst in out:
            to = host_port(dst)
            if d[:1] == bytes((_COOKIE,)):
                echo = bytes(d[2:10])
                owner = self.deferred.get((echo, to))
                now_asked = dst == src and echo == data[35:43]
                if owner is not None and not now_asked and len(d) == COOKIE_REPLY_LEN:
                    late += 1  # a late answer to an unproven address
                    self.cookie_book.add((bytes(d[10:26]), owner, to))
                    self.cookies[(owner, to)] = bytes(d[10:26])
                    continue
                cookie_bytes += len(d)
                if dst != src or len(d) != COOKIE_REPLY_LEN or hp is None:
                    self._find("cookie_to_source", f"{len(d)} bytes to {dst}", data, src, now)
                    continue
                self.cookie_book.add((bytes(d[10:26]), sender, to))
                self.cookies[(sender, to)] = bytes(d[10:26])
                continue
            if d[:1] == bytes((_DATA,)):
                # to a registered peer, or to the relay at a leg's other end
                # (a known relay whose address was proven: multi-hop)
                legs = {leg.addr for leg in self.relay.legs.values()}
                to_ok = dst in regs0.values() or dst in legs
                if not is_data or d != data or not to_ok or dst == src:
                    self._find("data_byte_for_byte", f"frame to {dst}", data, src, now)
                continue
            try:
                hdr = parse_control_header(d)
            except RemoteProtocolError:
                self._find("replies_are_sealed", f"{d.hex()} to {dst}", data, src, now)
                continue
            if hdr.sender.raw == self.relay.identity.x25519_public and not hdr.from_server:
                # the relay as the client of a channel to another relay
                if not self._to_announced_relay(d, hdr, to):
                    self._find("asks_relays_where_announced", f"{d.hex()} to {dst}", data, src, now)
                continue
            recipient = self._recipient(d, hdr, to, sender if dst == src else None, regs0, regs1)
            if recipient is None and dst == src and sender not in self.client_keys:
                # an answer to a key from the corpus we hold no keys for:
                # well formed is all we can check
                recipient = sender
            if recipient is None:
                self._find("replies_are_sealed", f"{d.hex()} to {dst}", data, src, now)
                continue
            if dst in (regs0.get(recipient), regs1.get(recipient)):
                continue
            if dst == src and recipient == sender and asks:
                if proven:  # the answer to this request: its own proof
                    continue
            elif recipient in self.proven.get(to, ()):
                continue  # a late answer, to an address its key proved before
            self._find(
                "unproven_gets_only_cookies",
                f"{MsgType(d[0]).name} of {len(d)} bytes to {dst}",
                data,
                src,
                now,
            )
        if cookie_bytes > len(data):
            self._find("no_amplification", f"{cookie_bytes} bytes of cookies", data, src, now)
        return late

    def _to_announced_relay(self, d: bytes, hdr: ControlHeader, to: HostPort) -> bool:
        for x, where in self.relay_addresses.items():
            keys = self.relay_keys.get(x)
            if to not in where or keys is None:
                continue
            try:
                open_control(d, hdr, keys)
            except RemoteProtocolError:
                continue
            return True
        return False

    def _recipient(
        self,
        d: bytes,
        hdr: ControlHeader,
        to: HostPort,
        sender: bytes | None,
        regs0: dict[bytes, Addr],
        regs1: dict[bytes, Addr],
    ) -> bytes | None:
        """Whose keys open ``d``: the input's sender, or a key registered (or
        proven) at ``to``."""
        candidates = [sender] if sender is not None else []
        candidates += [k for k, a in regs0.items() if host_port(a) == to]
        candidates += [k for k, a in regs1.items() if host_port(a) == to]
        candidates += sorted(self.proven.get(to, ()))
        for k in candidates:
            keys = self.client_keys.get(k)
            if keys is None:
                continue
            try:
                open_control(d, hdr, keys)
            except RemoteProtocolError:
                continue
            return k
        return None

    # ------------------------------------------------------------ timers

    def tick(self, now: float) -> list[tuple[bytes, Addr]]:
        relay = self.relay
        regs0 = {k: r.addr for k, r in relay.table.regs.items()}
        self._note_relay_addresses()
        before = dict(relay.stats.drops)
        self.last_known = None
        try:
            relay.handle_timer(now)
        except Exception as e:
            self._find(
                "no_exception", f"handle_timer: {e!r}", b"", None, now, traceback.format_exc()
            )
        out = relay.datagrams_to_send()
        drops = relay.stats.drops
        delta = {k: v - before.get(k, 0) for k, v in drops.items() if v != before.get(k, 0)}
        if delta.get("internal_error"):
            self._find("no_internal_error", "in housekeeping", b"", None, now)
        regs1 = {k: r.addr for k, r in relay.table.regs.items()}
        late = self._check_outputs(b"", None, now, out, regs0, regs1, False)
        rest = known_deferred_cookie(delta, late) if not self.strict else None
        if rest is not None:
            self.tally.known[DEFERRED] += 1
            delta = rest
        if delta:
            self._find("timers_count_no_drop", _reason_text(delta), b"", None, now)
        return out


# ---------------------------------------------------------------- client

INSIDE_A_RESPONSE = ("announcement_", "location_")
"""A link's drops of what a handled DISCOVERY_RESPONSE carries: an
announcement that does not verify, a LOCATION record that does not
(``location_<reason>``) or that is not for the peer asked about or not
signed by the relay it names (``location_mismatch``). Not datagram drops:
the response itself was handled."""


class LinkOracle:
    def __init__(
        self, link: RelayLink, server_keys: ChannelKeys, *, strict: bool = False, name: str = ""
    ) -> None:
        self.link = link
        self.server_keys = server_keys
        """The relay's keys for this peer: they open what the link sends."""
        self.strict = strict
        self.name = name
        self.tally = Tally()
        self.findings: list[Finding] = []
        self.broken = False
        """A known bug left the link unusable: the owner replaces it."""
        self.signature: tuple[object, ...] = ()
        self.last_known: str | None = None
        self._maps_ok = True
        self._entered: list[str] = []
        self._instrument()

    def _instrument(self) -> None:
        handlers = self.link._handlers
        entered = self._entered
        for t, fn in list(handlers.items()):

            def counted(
                body: Any, now: float, _fn: Callable[[Any, float], None] = fn, _n: str = t.__name__
            ) -> None:
                entered.append(_n)
                _fn(body, now)

            handlers[t] = counted

    def _find(self, rule: str, detail: str, data: bytes, now: float, tb: str = "") -> None:
        self.findings.append(Finding("client", rule, detail, bytes(data), None, now, tb))

    def _crashed(self, e: Exception, what: str, data: bytes, now: float) -> None:
        known = known_link_crash(e, self.link, now)
        if known is not None and not self.strict:
            self.tally.known[known] += 1
            self.last_known = known
        else:
            self._find("no_exception", f"{what}: {e!r}", data, now, traceback.format_exc())
        self.broken = True

    def deliver(self, data: bytes, now: float) -> list[bytes]:
        link = self.link
        c = link.counters
        before = dict(c.drops)
        received0 = c.received
        self._entered.clear()
        self.last_known = None
        try:
            link.receive(data, now)
        except Exception as e:
            self._crashed(e, "RelayLink.receive", data, now)
            return []
        out = self.collect(now, data)
        delta = {k: v - before.get(k, 0) for k, v in c.drops.items() if v != before.get(k, 0)}
        datagram = {k: v for k, v in delta.items() if not k.startswith(INSIDE_A_RESPONSE)}
        dropped = sum(datagram.values())
        handled = len(self._entered)
        t = self.tally
        t.inputs += 1
        if data[:1] == bytes((_COOKIE,)):
            ok = handled == 0 and ((dropped == 1 and not out) or (dropped == 0 and len(out) == 1))
        else:
            ok = (handled == 0 and dropped == 1) or (handled == 1 and dropped == 0)
        if c.received - received0 != 1 or not ok:
            self._find(
                "one_reason",
                f"drops {_reason_text(delta)}, handlers {handled}, outputs {len(out)}",
                data,
                now,
            )
        t.dropped += dropped > 0
        t.handled += handled > 0 and dropped == 0
        t.reasons.update(delta)
        if handled:
            t.handlers[self._entered[0]] += 1
        self._check_maps(data, now)
        self.signature = (tuple(sorted(delta)), tuple(self._entered), len(out) > 0)
        return out

    def api(self, what: str, call: Callable[[], object], now: float) -> None:
        """Call the link's API (connect, ping, ...) as the shell would."""
        if self.broken:
            return
        try:
            call()
        except Exception as e:
            self._crashed(e, what, b"", now)

    def tick(self, now: float) -> list[bytes]:
        if self.broken:
            return []
        try:
            self.link.handle_timer(now)
        except Exception as e:
            self._crashed(e, "RelayLink.handle_timer", b"", now)
            return []
        return self.collect(now, b"")

    def collect(self, now: float, cause: bytes) -> list[bytes]:
        """What the link sends: sealed for the relay, well formed, every one."""
        out = self.link.datagrams_to_send()
        for d in out:
            try:
                hdr = parse_control_header(d)
                open_control(d, hdr, self.server_keys)
            except RemoteProtocolError as e:
                self._find("sends_well_formed", f"{e!r}: {d.hex()}", cause, now)
        return out

    def _check_maps(self, data: bytes, now: float) -> None:
        """``sessions`` and ``session_of`` are inverse maps (reported when they
        stop being so, not on every input after)."""
        link = self.link
        dangling = [p for p, sid in link.session_of.items() if link.sessions.get(sid) != p]
        missing = [s for s, p in link.sessions.items() if link.session_of.get(p) != s]
        ok = not dangling and not missing
        if not ok and self._maps_ok:
            known = known_link_maps(dangling, missing)
            if known is not None and not self.strict:
                self.tally.known[known] += 1
                self.last_known = known
            else:
                what = f"session_of[{dangling[0]}]" if dangling else f"sessions[{missing[0].hex()}]"
                self._find("session_maps_inverse", f"{what} dangles", data, now)
        self._maps_ok = ok
