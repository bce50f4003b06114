"""Credits at the relay: asking peers for receipts, keeping and spreading them.

Theory of operation
-------------------
With a ledger (``enable_credits``; the shell gives it ``credits.db``), the
relay asks each peer registered here for a receipt of each session it
carries: a RECEIPT_REQUEST stating the session's byte count so far (both
directions, as the relay counts it for the budget and the metrics) and a
request number ``seq`` that grows. It asks every ``ask_interval_s`` (30 s)
while the count grew, sooner once ``ask_every_bytes`` (8 MB) more went
through, and once more when the session closes (before its SESSION_CLOSE
goes out). The peer answers with a RECEIPT it signed, for at most what we
claimed and at most what it observed itself (client/receipts.py).

A RECEIPT is taken only from the peer it names, for the request we made last
(same session, same seq), for no more than we claimed, signed within the
clock skew of our clock (so no one dates what it used back out of the
window); then the ledger
checks the signature, the policy and that the session's record moves
forward (relay/ledger.py). A stored receipt is news: it goes, with our
operator claim, to ``gossip_fanout`` random live relays that announce
CREDITS (RECEIPTS, answered by RECEIPTS_ACK), and every relay that stores
it as news passes it on the same way, so it reaches every relay in
O(log N) rounds as announcements do. Receipts are self-certifying, so
a relay takes one from any relay it knows, as long as it names a relay it
knows (or itself), and a claim only for a relay it knows (a claim is kept
for good: one for any made-up key would grow every relay's file and be
spread to all). There is no anti-entropy for receipts: a relay that was
down misses what was spread meanwhile (the next receipt of a live session
supersedes it anyway).

Our own claim is not news to spread once: it goes to each relay taking
credits the first time we see it live (relays that start after us, or
that we only learn of later, would otherwise never credit our operator),
and again to ``gossip_fanout`` random ones every ``CLAIM_RESEND_S``
(a lost datagram, a relay that did not know us yet).

Every refusal is counted by reason (``credit_counters``, /metrics).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from wgrelay.keys import PublicKey
from wgrelay.proto.constants import Capability, CloseReason, MsgType
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S
from wgrelay.proto.receipts import (
    MAX_REPORT_RELAYS,
    Claim,
    CreditQuery,
    CreditReport,
    Receipt,
    ReceiptBody,
    ReceiptRequest,
    Receipts,
    ReceiptsAck,
    RelayEarning,
    pack_records,
)
from wgrelay.relay.admission import Inbound
from wgrelay.relay.ledger import Ledger, Refusal
from wgrelay.relay.legs import LegsCore
from wgrelay.relay.sessions import Session
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

ASK_INTERVAL_S = 30.0
ASK_EVERY_BYTES = 8_000_000
SCAN_INTERVAL_S = 5.0
"""How often the sessions are looked at for a request due (a close asks at once)."""
CLOSED_WAIT_S = 30.0
"""How long a closed session's last request may still be answered."""
LEDGER_TICK_S = 60.0
"""How often the ledger forgets receipts that left its window."""
MAX_PENDING_PUSH = 512
"""Records waiting to be spread (a burst beyond this waits for the next
receipts of the same sessions, which supersede them; a claim beyond it for
its relay's next resend)."""
CLAIM_RESEND_S = 600.0
"""How often our own claim goes again to a few random relays."""
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1


@dataclass(slots=True)
class _Asked:
    """Our last request to one side of one session."""

    seq: int = 0
    claimed: int = 0
    acked: int = 0
    next_at: float = 0.0
    closed_at: float | None = None


class CreditsCore(LegsCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger: Ledger | None = None
        self.claim: Claim | None = None
        """Our operator's claim, endorsed by us (spread with the receipts)."""
        self._asked: dict[tuple[bytes, bytes], _Asked] = {}
        """(session id, side key) -> our last request to that side."""
        self._push_receipts: list[Receipt] = []
        self._push_claims: list[Claim] = []
        self._next_push = 0.0
        self._next_claim_resend = 0.0
        self._claim_sent_to: set[PublicKey] = set()
        """Relays that got our claim since we started (each once, then the
        random resends)."""
        self._next_scan = 0.0
        self._next_ledger_tick = 0.0
        self.credit_counts: dict[str, int] = {}
        """Requests sent, receipts taken, batches spread (metrics)."""
        # whom to spread to (not a secret): seeded from our key, not drawn
        # from rng, so the relay's other random choices stay as they were
        self._credits_random = random.Random(self.identity.public.raw)  # noqa: S311
        self._handlers.update(
            {
                MsgType.RECEIPT: self._handle_receipt,
                MsgType.CREDIT_QUERY: self._handle_credit_query,
                MsgType.RECEIPTS: self._handle_receipts,
            }
        )

    def enable_credits(self, ledger: Ledger, claim: Claim | None, now: float) -> None:
        """Keep receipts in ``ledger``; ``claim`` (member-signed) names our
        operator: we endorse it and spread it."""
        self.ledger = ledger
        self.contention.credits = ledger  # who comes first at a full relay
        ledger.tick(int(self._wall_at(now) * 1000))
        if claim is not None:
            self.claim = claim.endorsed_by(self.identity)
            refusal = ledger.add_claim(self.claim)  # spread by _send_claim
            if refusal not in (None, Refusal.DUPLICATE):
                # stale_claim: a newer claim for this relay is held (it
                # changed hands); future: issued ahead of our clock (taken
                # at a resend once the clock gets there)
                log.warning("operator claim not taken here: %s", refusal)

    def capabilities(self) -> int:
        caps = super().capabilities()
        return caps | Capability.CREDITS if self.ledger is not None else caps

    def _count_credit(self, what: str) -> None:
        self.credit_counts[what] = self.credit_counts.get(what, 0) + 1

    # ------------------------------------------------------------ asking

    def _housekeeping(self, now: float) -> None:
        super()._housekeeping(now)
        if self.ledger is None:
            return
        if now >= self._next_scan:
            # every few seconds, not every tick: a relay with 10,000 sessions
            # looks at 20,000 sides (a request is due every 30 s anyway)
            self._next_scan = now + SCAN_INTERVAL_S
            for s in list(self.sessions.values()):
                for key in (s.a_key, s.b_key):
                    self._maybe_ask(s, key, now, final=False)
            for k, asked in list(self._asked.items()):
                if asked.closed_at is not None and now - asked.closed_at >= CLOSED_WAIT_S:
                    del self._asked[k]
        if now >= self._next_ledger_tick:
            self._next_ledger_tick = now + LEDGER_TICK_S
            self.ledger.tick(int(self._wall_at(now) * 1000))
        if now >= self._next_push:
            self._send_claim(now)
            self._next_push = now + self.federation.config.gossip_interval_s
            self._spread(now)

    def _maybe_ask(self, s: Session, key: bytes, now: float, final: bool) -> None:
        reg = self.table.regs.get(key)
        if reg is None or key in self._leg_sides(s):
            return  # not registered here (a leg's far side is another relay)
        asked = self._asked.get((s.sid, key))
        if asked is None:
            asked = self._asked[(s.sid, key)] = _Asked(next_at=now + ASK_INTERVAL_S)
        if s.bytes <= asked.claimed:
            return  # nothing new to acknowledge
        if not final and now < asked.next_at and s.bytes - asked.claimed < ASK_EVERY_BYTES:
            return
        asked.seq += 1
        asked.claimed = s.bytes
        asked.next_at = now + ASK_INTERVAL_S
        self._send(ReceiptRequest(s.sid, asked.seq, s.bytes), reg, now)
        self._count_credit("requests_sent")

    def _leg_sides(self, s: Session) -> tuple[bytes, ...]:
        """The key of a session side that is another relay's (multi-hop)."""
        leg = self.legs.get(s.sid)
        if leg is None:
            return ()
        return (s.b_key,) if leg.entry else (s.a_key,)

    def _close(self, s: Session, reason: CloseReason, notify: set[bytes], now: float) -> None:
        if self.ledger is not None and s.sid in self.sessions:
            # the last count, asked before the close notice goes out, so the
            # peer still knows the session when it arrives
            for key in (s.a_key, s.b_key):
                self._maybe_ask(s, key, now, final=True)
                asked = self._asked.get((s.sid, key))
                if asked is not None:
                    asked.closed_at = now
        super()._close(s, reason, notify, now)

    # ------------------------------------------------------------ receipts from peers

    def _handle_receipt(self, inb: Inbound, body: ReceiptBody) -> None:
        ledger = self.ledger
        if ledger is None:
            self._drop(inb, DropReason.UNEXPECTED)
            return
        r = body.receipt
        asked = self._asked.get((r.session_id, inb.key))
        refusal: Refusal | None = None
        if r.relay != self.identity.public or r.peer.raw != inb.key:
            refusal = Refusal.WRONG_RELAY
        elif asked is None or r.seq != asked.seq or r.nbytes > asked.claimed:
            refusal = Refusal.OVER_CLAIM if asked and r.nbytes > asked.claimed else Refusal.REPLAYED
        elif abs(r.time_ms - self._wall_at(inb.now) * 1000) > MAX_CLOCK_SKEW_S * 1000:
            # signed just now, or a peer could date its receipts back so
            # that what it used leaves the window early (first hand only:
            # a receipt from gossip may be old)
            refusal = Refusal.MISDATED
        if refusal is not None:
            ledger.refuse(refusal)
            inb.dropped = True
            return
        outcome = ledger.add_receipt(r)
        if outcome is None and asked is not None:
            asked.acked = r.nbytes
            self._count_credit("receipts_taken")
            self._queue(r)

    def _queue(self, r: Receipt) -> None:
        if len(self._push_receipts) < MAX_PENDING_PUSH:
            self._push_receipts.append(r)

    # ------------------------------------------------------------ spreading

    def _spread(self, now: float) -> None:
        if not self._push_receipts and not self._push_claims:
            return
        own = self.identity.public
        targets = [
            k for k in self.federation.directory.live() if k != own and self._takes_credits(k)
        ]
        batches = pack_records(self._push_receipts, self._push_claims)
        self._push_receipts, self._push_claims = [], []
        if not targets:
            return
        for key in self._credits_random.sample(
            targets, min(self.federation.config.gossip_fanout, len(targets))
        ):
            for batch in batches:
                if self.federation._send(key, batch, now):  # the relays' channel
                    self._count_credit("batches_sent")

    def _send_claim(self, now: float) -> None:
        """Our claim to each relay taking credits we have not sent it to, and
        every ``CLAIM_RESEND_S`` to a few random ones."""
        if self.claim is None:
            return
        own = self.identity.public
        live = [k for k in self.federation.directory.live() if k != own and self._takes_credits(k)]
        self._claim_sent_to &= set(live)  # a relay that comes back gets it again
        targets = [k for k in live if k not in self._claim_sent_to]
        if now >= self._next_claim_resend:
            self._next_claim_resend = now + CLAIM_RESEND_S
            if self.ledger is not None:
                self.ledger.add_claim(self.claim)  # (a duplicate, unless refused at start)
            fanout = self.federation.config.gossip_fanout
            targets += self._credits_random.sample(live, min(fanout, len(live)))
        for key in dict.fromkeys(targets):
            self._claim_sent_to.add(key)
            if self.federation._send(key, Receipts((), (self.claim,)), now):
                self._count_credit("claims_sent")

    def _private_session(self, sid: bytes) -> bool:
        """A session we carry on a private path (core.py: private_legs.py's)."""
        return False

    def _takes_credits(self, key: PublicKey) -> bool:
        m = self.federation.directory.get(key)
        return m is not None and bool(m.announcement.info.capabilities & Capability.CREDITS)

    def _handle_receipts(self, inb: Inbound, body: Receipts) -> None:
        fed = self.federation
        m = fed.directory.by_x25519(inb.key)
        ledger = self.ledger
        if m is None or ledger is None:
            self._drop(inb, DropReason.UNEXPECTED)  # only relays we know, and only with a ledger
            return
        fed.heard_from(m.key, inb.now)
        stored = refused = 0
        for c in body.claims:
            if c.relay != self.identity.public and fed.directory.get(c.relay) is None:
                ledger.refuse(Refusal.WRONG_RELAY)  # not a relay we know: kept for good
                refused += 1
                continue
            outcome = ledger.add_claim(c)
            if outcome is None:
                stored += 1
                if len(self._push_claims) < MAX_PENDING_PUSH:
                    self._push_claims.append(c)
            elif outcome is not Refusal.DUPLICATE:
                refused += 1
        for r in body.receipts:
            if self._private_session(r.session_id):
                # one of ours on a private path: stored, it would tie the
                # peer it names to the one we serve under that id
                ledger.refuse(Refusal.PRIVATE)
                refused += 1
                continue
            if r.relay != self.identity.public and fed.directory.get(r.relay) is None:
                ledger.refuse(Refusal.WRONG_RELAY)  # no relay we know carried it
                refused += 1
                continue
            outcome = ledger.add_receipt(r)
            if outcome is None:
                stored += 1
                self._queue(r)
            elif outcome is not Refusal.DUPLICATE:
                refused += 1
        self._reply(inb, ReceiptsAck(min(stored, 255), min(refused, 255)))

    # ------------------------------------------------------------ balances

    def _handle_credit_query(self, inb: Inbound, body: CreditQuery) -> None:
        ledger = self.ledger
        if ledger is None:
            self._drop(inb, DropReason.UNEXPECTED)
            return
        st = ledger.statement(body.member.raw)
        self._reply(
            inb,
            CreditReport(
                body.query_id,
                body.member,
                ledger.window_days,
                # (sums the u64/u32 fields cannot hold are shown at their top)
                min(st.earned, U64_MAX),
                min(st.used, U64_MAX),
                min(st.used_receipts, U32_MAX),
                tuple(
                    RelayEarning(e.relay, min(e.nbytes, U64_MAX), min(e.receipts, U32_MAX))
                    for e in st.relays[:MAX_REPORT_RELAYS]
                ),
            ),
        )

    def get_stats(self) -> RelayStats:
        st = super().get_stats()
        st.credits = self.credit_counters()
        return st

    def credit_counters(self) -> dict[str, int]:
        """What /metrics shows of credits: counts and refusals by reason."""
        out = dict(self.credit_counts)
        if self.ledger is not None:
            out["receipts_stored"] = self.ledger.stored
            out["receipts_duplicate"] = self.ledger.duplicates
            out["held"] = self.ledger.receipts_count()
            for reason, n in self.ledger.refused.items():
                out[f"refused_{reason}"] = n
        return out
