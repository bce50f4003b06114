"""Spreading what relays know: push gossip, anti-entropy (digests, pages,
pulls) and SWIM liveness (probes, indirect probes, death notices). The
design is in federation.py's docstring."""

from __future__ import annotations

import logging

from wgrelay.discovery.directory import Liveness
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    MAX_DIGEST_ENTRIES,
    MAX_PULL_KEYS,
)
from wgrelay.proto.federation import (
    MAX_DEAD_NOTICES,
    Digest,
    DigestReply,
    Gossip,
    ProbeAnswer,
    ProbeRequest,
    Pull,
)
from wgrelay.proto.messages import Ping, Pong, encode_body
from wgrelay.relay.federation_base import (
    GOSSIP_MOST,
    MAX_BODY,
    FederationBase,
    Reply,
    _Probe,
    _ProbeOnBehalf,
    packed,
)

log = logging.getLogger(__name__)


class FederationSpread(FederationBase):
    # ------------------------------------------------------------ answering

    def _digest_reply(self, body: Digest) -> DigestReply:
        differ = self.directory.differing(body.buckets)
        mask = sum(1 << i for i in differ)
        # A page holds 25 entries: fewer than the differing buckets of a large
        # federation hold (announcements are re-signed all the time, so most
        # buckets differ by some version). The buckets where the asker counts
        # fewer relays than we do come first (it lacks members there), the
        # others in random order, each bucket's entries shuffled: a cut page
        # is a different page each time. (Cut in key order, the buckets of
        # high keys were never offered and their relays stayed unknown.)
        mine = self.directory.digest()
        self._random.shuffle(differ)
        differ.sort(key=lambda i: body.buckets[i][0] - mine[i][0])
        entries: list[tuple[PublicKey, int]] = []
        for i in differ:
            chunk = self.directory.versions_in((i,))
            self._random.shuffle(chunk)
            entries += chunk
        more = len(entries) > MAX_DIGEST_ENTRIES
        return DigestReply(tuple(entries[:MAX_DIGEST_ENTRIES]), mask, more)

    def _probe_on_behalf(self, body: ProbeRequest, reply: Reply, now: float) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if body.target == self.key or not self._send(body.target, Ping(echo), now):
            reply(ProbeAnswer(body.target, body.nonce, body.target == self.key))
            return
        self._on_behalf[echo] = _ProbeOnBehalf(
            reply, body.target, body.nonce, echo, now + self.config.probe_timeout_s
        )

    def _on_dead_notices(self, dead: tuple[tuple[PublicKey, int], ...], now: float) -> None:
        for key, _issued in dead:
            if key == self.key:
                self._next_announce = now  # refute: a newer announcement of ours
                self._refute = True
                continue
            m = self.directory.get(key)
            if m is None or m.liveness is Liveness.DEAD:
                continue  # news to nobody
            # See for ourselves before believing it: one probe. The relay
            # that sent the notice probed it directly and through others and
            # suspected it for suspect_timeout_s; if it is silent to us too,
            # it is dead, with no suspicion of our own (each relay passing
            # the notice on after a suspicion period of its own took ~6 s a
            # hop). Even when we hold a newer announcement than the notice
            # names: a relay re-signs when its load changes, so its last
            # version may be newer than its declarer's and still be from
            # before it died. An answer refutes a notice.
            probing = [p for p in self._probes.values() if p.target == key]
            for p in probing:
                p.corroborate = True
            if not probing:
                self._probe(key, now, corroborate=True)

    def _pulled(self, key: PublicKey, now: float) -> None:
        waiting = self._next_page.get(key)
        if waiting is None:
            return
        left, pages = waiting
        if left > 1:
            self._next_page[key] = (left - 1, pages)
            return
        del self._next_page[key]
        self._pages[key] = pages
        self._send(key, Digest(self.directory.digest()), now)

    def _on_pong(self, key: PublicKey, body: Pong, now: float) -> None:
        self.rtts.answered(key, body.echo_id, now)
        probe = self._probes.pop(body.echo_id, None)
        if probe is not None:
            self._alive(probe.target, now)
        behalf = self._on_behalf.pop(body.echo_id, None)
        if behalf is not None:
            behalf.requester_reply(ProbeAnswer(behalf.target, behalf.nonce, True))

    def _on_probe_answer(self, body: ProbeAnswer, now: float) -> None:
        probe = self._probes.get(body.nonce)
        if probe is not None and body.alive and probe.target == body.target:
            del self._probes[body.nonce]
            self._alive(body.target, now)

    def _on_digest_reply(self, key: PublicKey, body: DigestReply, now: float) -> None:
        theirs = dict(body.entries)
        want = [k for k, i in body.entries if (self.directory.issued(k) or -1) < i]
        pulls = 0
        for start in range(0, len(want), MAX_PULL_KEYS):
            pulls += self._send(key, Pull(tuple(want[start : start + MAX_PULL_KEYS])), now)
        # relays it lists as live that we declared dead: tell it (it probes
        # for itself). A notice a relay missed in the gossip rounds (a few in
        # a thousand relay pairs when a fifth of 200 relays die at once) is
        # made good at its next sync, not by its own probing (up to N s).
        dead = [
            (k, m.issued_ms)
            for k, _ in body.entries
            if (m := self.directory.get(k)) is not None and m.liveness is Liveness.DEAD
        ]
        if dead:
            self._send(key, Gossip((), tuple(dead[:MAX_DEAD_NOTICES])), now)
        pages = self._pages.pop(key, 0) + 1
        if body.more:
            # their page is partial: what they lack is unknown yet. If it
            # named relays new to us, the next page follows once the pulls
            # are answered: a page is 25 relays, and one page a sync interval
            # left a relay joining a federation of N unaware of most of it for
            # N/25 intervals. (Newer versions alone do not: gossip brings
            # those, and in a federation that re-signs all the time nearly
            # every page has one; following them doubled the DIGESTs.)
            new = any(self.directory.issued(k) is None for k in want)
            if new and pulls and pages < self.config.max_sync_pages:
                self._next_page[key] = (pulls, pages)
            return
        buckets = {i for i in range(16) if body.buckets >> i & 1}
        give = [
            raw
            for k, i in self.directory.versions_in(buckets)
            if theirs.get(k, -1) < i and (raw := self.directory.raw_announcement(k)) is not None
        ]
        self._gossip_to(key, give, now)

    # ------------------------------------------------------------ gossip

    def _others(self) -> list[PublicKey]:
        return [k for k in self.directory.live() if k != self.key]

    def _flush_gossip(self, now: float) -> None:
        anns, self._push = self._push, []
        # each notice goes out in dead_notice_rounds rounds, to fanout relays
        # each time: sent once, as announcements are, it died out before
        # reaching everyone (receivers pass it on only once they agree), and
        # the last relays learned of a death from their own probing, up to N s
        dead = list(self._dead_notices)[:MAX_DEAD_NOTICES]
        for notice in dead:
            left = self._dead_notices.pop(notice) - 1
            if left > 0:
                self._dead_notices[notice] = left
        targets = self._others()
        self._random.shuffle(targets)
        fanout = self.config.gossip_fanout
        if len(targets) < fanout:
            # a relay that knows few others yet (the federation is starting):
            # its bootstrap relays too, known or not (else news that reaches
            # a relay knowing only the newcomer dies there)
            targets += [k for k in self._bootstrap if self.directory.get(k) is None]
        for key in targets[:fanout]:
            # never a relay's own announcement to it: a copy that dies there
            self._gossip_to(key, [raw for k, raw in anns if k != key], now, dead)

    def _gossip_to(
        self,
        key: PublicKey,
        anns: list[bytes],
        now: float,
        dead: list[tuple[PublicKey, int]] | None = None,
    ) -> None:
        own = self.directory.own_announcement
        if anns and key not in self._acquainted and own is not None and own.raw not in anns:
            # it may not know us, and would drop the lot (only known relays
            # speak federation): ours first, so news spreads from us too
            anns = [own.raw, *anns]
        notices = tuple(dead or ())
        room = MAX_BODY - len(encode_body(Gossip((), notices)))
        for i, chunk in enumerate(packed(anns, room, GOSSIP_MOST) or [[]]):
            if chunk or (notices and i == 0):
                self._send(key, Gossip(tuple(chunk), notices if i == 0 else ()), now)

    def _sync(self, now: float) -> None:
        others = self._others()
        if others:
            peer = self._random.choice(others)
        elif self._bootstrap:
            peer = self._random.choice(sorted(self._bootstrap, key=lambda k: k.raw))
        else:
            return
        own = self.directory.own_announcement
        if peer not in self._acquainted and own is not None:
            # a relay that does not know us drops our DIGEST (only known
            # relays speak federation): introduce ourselves first. (We may
            # know it from others' gossip while ours never reached it.)
            self._send(peer, Gossip((own.raw,)), now)
        self._acquainted.discard(peer)  # until its answer shows it still knows us
        self._pages.pop(peer, None)
        self._next_page.pop(peer, None)
        self._send(peer, Digest(self.directory.digest()), now)

    # ------------------------------------------------------------ liveness

    def _probe_next(self, now: float) -> None:
        if not self._probe_order:
            self._probe_order = [k for k in self._others()]
            self._random.shuffle(self._probe_order)
        while self._probe_order:
            key = self._probe_order.pop()
            m = self.directory.get(key)
            if m is not None and m.liveness is not Liveness.DEAD:
                self._probe(key, now)
                return

    def _probe(self, key: PublicKey, now: float, corroborate: bool = False) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if self._send(key, Ping(echo), now):
            deadline = now + self.config.probe_timeout_s
            self._probes[echo] = _Probe(key, echo, deadline, corroborate=corroborate)

    def _check_probes(self, now: float) -> None:
        for echo, p in list(self._probes.items()):
            if now < p.deadline:
                continue
            del self._probes[echo]
            if p.corroborate:
                self._declare_dead(p.target, now)
                continue
            if not p.indirect:
                helpers = [k for k in self._others() if k != p.target]
                self._random.shuffle(helpers)
                asked = 0
                for h in helpers[: self.config.indirect_probes]:
                    asked += self._send(h, ProbeRequest(p.target, echo), now)
                if asked:
                    self._probes[echo] = _Probe(
                        p.target, echo, now + self.config.probe_timeout_s, indirect=True
                    )
                    continue
            if self.directory.suspect(p.target, now):
                log.info("relay %s suspected (no answer to probes)", p.target.short())
        for m in self.directory.members():
            if m.liveness is Liveness.SUSPECT and now >= m.since + self.config.suspect_timeout_s:
                self._declare_dead(m.key, now)
        for echo, b in list(self._on_behalf.items()):
            if now >= b.deadline:
                del self._on_behalf[echo]
                b.requester_reply(ProbeAnswer(b.target, b.nonce, False))

    def _declare_dead(self, key: PublicKey, now: float) -> None:
        m = self.directory.get(key)
        if m is None or not self.directory.declare_dead(key, now):
            return
        log.warning("relay %s declared dead", key.short())
        self._dead_notices[(key, m.issued_ms)] = self.config.dead_notice_rounds
        self._live_changed = True
