"""The agent's side of usage receipts: acknowledge what we saw, never more.

A relay carrying one of our sessions asks now and then (RECEIPT_REQUEST)
for a signed receipt of the session's bytes so far, stating its own count.
We sign ``min(claim, observed + tolerance)``: the relay cannot get more
from us than we can vouch for, whatever it claims.

What we observe, per peer, is given by the shell (``observe``) as two
cumulative counts that grow while the peer's traffic flows, each honest on
its own path:

* the local proxy's counters (framed mode): bytes WireGuard handed the
  proxy for the relay and bytes the proxy handed WireGuard from it, and the
  number of those packets;
* WireGuard's per-peer transfer counters (rx + tx, which the daemon reads
  anyway): in port mode WireGuard talks to the relay's session port itself,
  so nothing passes the proxy.

A session's observation is the growth since the session began (the
baseline is taken when the session is established), the larger of the two
(a session can move between port mode and framed while it lasts; in framed
mode both grow alike, as WireGuard's packets are the proxy's). The
tolerance covers what the relay counts and we cannot see: 10 bytes of
framing per framed packet, and 2 % plus 16 kB for counters read up to a
second before the relay's (WireGuard's are polled). A relay can therefore
inflate a count by at most that much, never more.

We never sign less than we signed before for the same session (the ledger
would refuse it), and never answer a request number we already answered.
A closed session's last observation is frozen at the close, whoever ends
it (the link tells us: ``session_closed``), and kept for ``CLOSED_KEEP_S``:
the relay asks once more as it closes the session.

Sans-I/O: time and the counters are given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import DATA_HEADER_LEN
from wgrelay.proto.receipts import Receipt, ReceiptRequest

CLOSED_KEEP_S = 60.0
TOLERANCE_FIXED = 16_384
TOLERANCE_PCT = 2
MAX_SESSIONS = 4096
"""Sessions remembered at once (the oldest closed ones go first)."""


@dataclass(frozen=True, slots=True)
class Observed:
    """Cumulative counts for one peer, as the shell reads them."""

    proxy_bytes: int = 0
    proxy_packets: int = 0
    wireguard_bytes: int = 0


Observe = Callable[[PublicKey], Observed]


@dataclass(slots=True)
class _Meter:
    peer: PublicKey
    baseline: Observed
    final: Observed | None = None
    closed_at: float = 0.0
    seq: int = 0
    acked: int = 0


def tolerance(bytes_seen: int, framed_packets: int) -> int:
    return TOLERANCE_FIXED + bytes_seen * TOLERANCE_PCT // 100 + framed_packets * DATA_HEADER_LEN


class ReceiptSigner:
    def __init__(self, private_key: PrivateKey, observe: Observe) -> None:
        self._key = private_key
        self.public = private_key.public_key()
        self._observe = observe
        self._meters: dict[tuple[PublicKey, bytes], _Meter] = {}
        self.signed = 0
        self.bytes_signed = 0
        self.refused: Counter[str] = Counter()
        """Requests we did not answer, by reason."""
        self.trimmed = 0
        """Receipts signed for less than the relay claimed (we saw less)."""

    def session_started(
        self, relay: PublicKey, peer: PublicKey, session_id: bytes, now: float
    ) -> None:
        """A session came up: its observation starts from the counts now."""
        known = self._meters.get((relay, session_id))
        if known is not None and known.peer == peer:
            return
        # (a relay that reuses an id for another peer gets a new meter: the
        # old one counts another peer's traffic)
        self.session_ended(relay, peer, now)  # a session it replaces at that relay
        self.expire(now)
        if len(self._meters) >= MAX_SESSIONS:
            closed = [k for k, m in self._meters.items() if m.final is not None]
            for k in (closed or list(self._meters))[: len(self._meters) - MAX_SESSIONS + 1]:
                del self._meters[k]
        self._meters[(relay, session_id)] = _Meter(peer, self._observe(peer))

    def session_ended(self, relay: PublicKey, peer: PublicKey, now: float) -> None:
        """The peer's session at ``relay`` ended: its count stops here."""
        for (r, _), m in self._meters.items():
            if r == relay and m.peer == peer and m.final is None:
                m.final = self._observe(peer)
                m.closed_at = now

    def session_closed(self, relay: PublicKey, session_id: bytes, now: float) -> None:
        """We no longer hold the session at ``relay`` (we closed it, the relay
        did, or the link was lost): its count stops here. Without this a
        session we left kept growing with the peer's WireGuard counters
        (every path the peer's traffic took afterwards), and the relay could
        ask for it for as long as it liked."""
        m = self._meters.get((relay, session_id))
        if m is not None and m.final is None:
            m.final = self._observe(m.peer)
            m.closed_at = now

    def expire(self, now: float) -> None:
        for k, m in list(self._meters.items()):
            if m.final is not None and now - m.closed_at >= CLOSED_KEEP_S:
                del self._meters[k]

    def observed(self, relay: PublicKey, session_id: bytes) -> tuple[int, int] | None:
        """(bytes we can vouch for, framed packets) of a session, or None."""
        m = self._meters.get((relay, session_id))
        if m is None:
            return None
        now_seen = m.final if m.final is not None else self._observe(m.peer)
        base = m.baseline
        proxy = max(0, now_seen.proxy_bytes - base.proxy_bytes)
        wg = max(0, now_seen.wireguard_bytes - base.wireguard_bytes)
        return max(proxy, wg), max(0, now_seen.proxy_packets - base.proxy_packets)

    def answer(self, relay: PublicKey, req: ReceiptRequest, wall_ms: int) -> Receipt | None:
        """The receipt to send for ``req`` from ``relay``, or None (counted)."""
        m = self._meters.get((relay, req.session_id))
        seen = self.observed(relay, req.session_id)
        if m is None or seen is None:
            self.refused["unknown_session"] += 1
            return None
        if req.seq <= m.seq:
            self.refused["old_request"] += 1
            return None
        nbytes, packets = seen
        ack = min(req.claimed, nbytes + tolerance(nbytes, packets))
        if ack < m.acked:
            # the relay claims less than we acknowledged before: its count
            # went back (it restarted?); a lower receipt would be refused
            self.refused["claim_went_back"] += 1
            return None
        if ack < req.claimed:
            self.trimmed += 1  # signed, but for less than the relay claimed
        m.seq, m.acked = req.seq, ack
        self.signed += 1
        self.bytes_signed += ack
        r = Receipt(relay, self.public, req.session_id, req.seq, ack, wall_ms)
        return r.signed_by(self._key)
