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
  handler table and counts handler entries itself;
* **return routability**: an address gets nothing but cookie replies (26
  bytes, no larger than the datagram that caused them, at most that many bytes
  in all) unless it is the registered address of the key the message is for,
  before or after the input, or the input came from there with a cookie the
  relay had sent to that key at that address. Every other output is opened
  with its recipient's keys: the relay only ever sends well-formed, sealed
  messages, and data frames only byte for byte to a registered address.

Client (``LinkOracle.deliver``): no exception escapes ``RelayLink.receive`` or
``handle_timer``; every input counts one ``received`` and is either dropped
under exactly one reason or reaches exactly one handler (which drops
nothing at datagram level; bad announcements inside a response are counted
apart, as ``announcement_*``); a cookie reply is dropped or answered by
exactly one repeat; everything the link sends is a well-formed message sealed
for the relay; ``sessions`` and ``session_of`` stay inverse maps.

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
    open_control,
    parse_control_header,
)
from wgrelay.relay.admission import Addr
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


# ---------------------------------------------------------------- relay


class RelayOracle:
    def __init__(
        self,
        relay: RelayCore,
        client_keys: dict[bytes, ChannelKeys],
        *,
        strict: bool = False,
    ) -> None:
        self.relay = relay
        self.client_keys = client_keys
        """Sender key -> that party's own channel keys (to open what the relay sends it)."""
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
        self._entered: list[int] = []
        self._instrument()

    def _instrument(self) -> None:
        """Count handler entries: the one thing no relay counter tells."""
        handlers = self.relay._handlers
        entered = self._entered
        for t, fn in list(handlers.items()):

            def counted(
                inb: Any, body: Any, _fn: Callable[[Any, Any], None] = fn, _t: int = int(t)
            ) -> None:
                entered.append(_t)
                _fn(inb, body)

            handlers[t] = counted

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
        if self.earlier_cookies is not None and len(data) >= 75 and data[2] & 1:
            seen = (bytes(data[59:75]), bytes(data[3:35]), host_port(src))
            if seen not in self.cookie_book and self.earlier_cookies(*seen):
                self.cookie_book.add(seen)  # proof from an earlier run: this run's from now
        self._entered.clear()
        self.last_known = None
        try:
            relay.receive(data, src, now)
        except Exception as e:
            self._find("no_exception", repr(e), data, src, now, traceback.format_exc())
        out = relay.datagrams_to_send()
        regs1 = {k: r.addr for k, r in relay.table.regs.items()}
        delta = {k: v - before.get(k, 0) for k, v in drops.items() if v != before.get(k, 0)}
        dropped = sum(delta.values())
        handled = len(self._entered)
        is_data = bool(data) and data[0] == _DATA
        t = self.tally
        t.inputs += 1
        if delta.get("internal_error"):
            self._find("no_internal_error", _reason_text(delta), data, src, now)
        if is_data:
            forwarded = len(out)
            ok = handled == 0 and dropped + forwarded == 1
            t.forwarded += forwarded
        else:
            ok = stats.control_received - control0 == 1 and (
                (handled == 0 and dropped == 1) or (handled == 1 and dropped <= 1)
            )
            if handled:
                t.handlers[MsgType(self._entered[0]).name] += 1
                t.handled += dropped == 0
        if not ok:
            known = known_relay_miscount(delta, handled)
            if known is not None and not self.strict:
                t.known[known] += 1
                self.last_known = known
            else:
                self._find(
                    "one_reason",
                    f"drops {_reason_text(delta)}, handlers {handled}, outputs {len(out)}",
                    data,
                    src,
                    now,
                )
        t.dropped += dropped > 0
        t.reasons.update(delta)
        self._check_outputs(data, src, now, out, regs0, regs1, is_data)
        self.signature = (
            is_data,
            tuple(sorted(delta)),
            tuple(self._entered),
            tuple(sorted({d[0] for d, _ in out if d})),
        )
        return out

    def _check_outputs(
        self,
        data: bytes,
        src: Addr,
        now: float,
        out: list[tuple[bytes, Addr]],
        regs0: dict[bytes, Addr],
        regs1: dict[bytes, Addr],
        is_data: bool,
    ) -> None:
        if not out:
            return
        sender = bytes(data[3:35]) if len(data) >= 35 else b""
        hp = host_port(src)
        cookie = bytes(data[59:75]) if len(data) >= 75 and data[2] & 1 else None
        proven = cookie is not None and (cookie, sender, hp) in self.cookie_book
        cookie_bytes = 0
        for d, dst in out:
            if d[:1] == bytes((_COOKIE,)):
                cookie_bytes += len(d)
                if dst != src or len(d) != COOKIE_REPLY_LEN:
                    self._find("cookie_to_source", f"{len(d)} bytes to {dst}", data, src, now)
                self.cookie_book.add((bytes(d[10:26]), sender, hp))
                self.cookies[(sender, hp)] = bytes(d[10:26])
                continue
            if d[:1] == bytes((_DATA,)):
                if not is_data or d != data or dst not in regs0.values() or dst == src:
                    self._find("data_byte_for_byte", f"frame to {dst}", data, src, now)
                continue
            recipient = self._recipient(d, dst, sender if dst == src else None, regs0, regs1)
            if recipient is None and dst == src and sender not in self.client_keys:
                # an answer to a key from the corpus we hold no keys for:
                # well formed is all we can check
                recipient = sender if self._well_formed(d) else None
            if recipient is None:
                self._find("replies_are_sealed", f"{d.hex()} to {dst}", data, src, now)
                continue
            if dst in (regs0.get(recipient), regs1.get(recipient)):
                continue
            if dst == src and recipient == sender and proven:
                continue
            self._find(
                "unproven_gets_only_cookies",
                f"{MsgType(d[0]).name} of {len(d)} bytes to {dst}",
                data,
                src,
                now,
            )
        if cookie_bytes > len(data):
            self._find("no_amplification", f"{cookie_bytes} bytes of cookies", data, src, now)

    @staticmethod
    def _well_formed(d: bytes) -> bool:
        try:
            parse_control_header(d)
        except RemoteProtocolError:
            return False
        return True

    def _recipient(
        self,
        d: bytes,
        dst: Addr,
        sender: bytes | None,
        regs0: dict[bytes, Addr],
        regs1: dict[bytes, Addr],
    ) -> bytes | None:
        """Whose keys open ``d``: the input's sender, or a key registered at ``dst``."""
        try:
            hdr = parse_control_header(d)
        except RemoteProtocolError:
            return None
        candidates = [sender] if sender is not None else []
        candidates += [k for k, a in regs0.items() if a == dst]
        candidates += [k for k, a in regs1.items() if a == dst]
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
        internal0 = relay.stats.drops["internal_error"]
        try:
            relay.handle_timer(now)
        except Exception as e:
            self._find(
                "no_exception", f"handle_timer: {e!r}", b"", None, now, traceback.format_exc()
            )
        out = relay.datagrams_to_send()
        if relay.stats.drops["internal_error"] != internal0:
            self._find("no_internal_error", "in housekeeping", b"", None, now)
        for d, dst in out:
            recipient = self._recipient(d, dst, None, regs0, {})
            if recipient is None:
                self._find("timer_sends_to_registered", f"{d.hex()} to {dst}", b"", None, now)
        return out


# ---------------------------------------------------------------- client


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
        datagram = {k: v for k, v in delta.items() if not k.startswith("announcement_")}
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
