"""A deterministic world to fuzz in: fixed keys, a fake clock, a relay with live state.

Every key comes from a label (``derive``), the relay's random numbers and the
links' from seeded generators, and the clock starts at ``WALL0``: the corpus
(tests/fuzz/corpus/) is sealed with these keys at that time, so its datagrams
authenticate in this world.

The world is a relay core, two more relays of its federation (``r1``, ``r2``:
real ``RelayCore``s whose announcements it holds and which hold its own, so
they gossip, sync, probe and store location records with it and answer what
it asks them) and six honest peers, each a real ``RelayLink`` (they do the
cookie dance themselves), wired by hand like tests/unit/test_relay_core.py
does: p0-p1 and p2-p3 hold sessions (p1 over
IPv6), p4 refuses incoming sessions, p5 never answers offers so p2's offer to
it stays pending. ``maintain`` puts all that back whenever fuzzed input took
it apart. Strangers hold keys the relay has not seen, ``d0`` is a key the
policy refuses, and a few more parties speak with keys no honest peer would
use (the relay's own, a weak one). ``rb`` is a relay identity nobody knows
(until it introduces itself with a GOSSIP of its own announcement). Every
datagram the fuzzed relay receives, honest or not, passes through a
``RelayOracle``; every datagram a link receives, through its ``LinkOracle``.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import nacl.bindings as sodium

from tests.fuzz.oracle import Finding, LinkOracle, RelayOracle, host_port
from wgrelay.client.link import LinkConfig, LinkState, RelayLink
from wgrelay.client.plan_links import PlanLink
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, clamp
from wgrelay.proto.constants import MsgType
from wgrelay.proto.envelope import ChannelKeys, derive_client_keys, derive_server_keys
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.admission import Addr
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.ledger import Ledger
from wgrelay.relay.sessions import pair_of

WALL0 = 1_700_000_000.0
"""The wall clock at now = 0 (the corpus is sealed at this time)."""
WORLD_SEED = 20_240_808


def derive(label: str) -> bytes:
    return hashlib.sha256(b"wgrelay fuzz " + label.encode()).digest()


RELAY_SEED = derive("relay")
OWN_ADDRESSES: tuple[Addr, ...] = (("192.0.2.1", 51820), ("2001:db8::1", 51820, 0, 0))

PEERS: tuple[tuple[str, Addr], ...] = (
    ("p0", ("198.51.100.10", 40000)),
    ("p1", ("2001:db8:1::11", 40001, 0, 0)),
    ("p2", ("198.51.100.12", 40002)),
    ("p3", ("198.51.100.13", 40003)),
    ("p4", ("198.51.100.14", 40004)),
    ("p5", ("198.51.100.15", 40005)),
)
SESSIONS = (("p0", "p1"), ("p2", "p3"))
PENDING = ("p2", "p5")
REFUSES_INCOMING = "p4"
NEVER_ANSWERS = "p5"
STRANGERS: tuple[tuple[str, Addr], ...] = (
    ("s0", ("203.0.113.20", 5000)),
    ("s1", ("203.0.113.21", 5001)),
    ("s2", ("203.0.113.22", 5002)),
    ("s3", ("2001:db8:2::23", 5003, 0, 0)),
)
DENIED = ("d0", ("203.0.113.30", 5030))
RELAYS: tuple[tuple[str, Addr], ...] = (
    ("r1", ("192.0.2.2", 51820)),
    ("r2", ("192.0.2.3", 51820)),
)
"""The other relays of the federation (real cores): the fuzzed relay holds
their announcements, they hold its own."""
UNKNOWN_RELAY = ("rb", ("192.0.2.9", 51820))
"""A relay identity the fuzzed relay does not know (no core behind it)."""
FRESH = tuple(f"x{i}" for i in range(8))
"""Keys the fuzzer speaks with from any address."""

ADDRESS_POOL: tuple[Addr, ...] = (
    *[(f"203.0.113.{50 + i}", 6000 + i) for i in range(12)],
    ("2001:db8:ff::1", 7000, 0, 0),
    ("2001:db8:ff::2", 7000, 0, 0),
    ("2001:db8:ff:0:1::1", 7001, 0, 0),  # same /64 as the two above
    ("2001:db8:ff::3", 7002),  # IPv6 as a 2-tuple
    ("fe80::1%eth0", 7003, 0, 2),  # link-local with a scope
    ("::ffff:203.0.113.60", 6100, 0, 0),  # IPv4-mapped
    OWN_ADDRESSES[0],
    OWN_ADDRESSES[1],
    ("127.0.0.1", 51820),  # loopback on the relay's port
    ("::1", 51820, 0, 0),
    ("0.0.0.0", 5000),
    ("::", 5000, 0, 0),
    ("224.0.0.1", 5000),
    ("ff02::1", 5000, 0, 0),
    ("255.255.255.255", 5000),
    ("198.51.100.77", 0),
    ("198.51.100.78", 65535),
)
"""Source addresses the fuzzer sends from (all of them 'received at' by it)."""


class DenyPolicy:
    description = "fuzz"

    def __init__(self, denied: Iterable[bytes]) -> None:
        self.denied = frozenset(denied)

    def allows(self, key: bytes) -> bool:
        return key not in self.denied

    def refresh(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Party:
    """A key the fuzzer can speak with, and where it usually speaks from."""

    name: str
    public: bytes
    private: bytes | None
    client: ChannelKeys | None
    """Its own channel keys (client side: seals to the relay, opens from it)."""
    server: ChannelKeys | None
    """The relay's channel keys for it (seal to it, open from it)."""
    home: Addr

    @property
    def to_relay(self) -> bytes | None:
        """The AEAD key of party -> relay messages."""
        return self.client.tx if self.client is not None else None

    @property
    def from_relay(self) -> bytes | None:
        return self.server.tx if self.server is not None else None


def make_party(
    name: str, private: bytes | None, public: bytes, relay: RelayIdentity, home: Addr
) -> Party:
    client = server = None
    if private is not None:
        try:
            client = derive_client_keys(public, private, relay.x25519_public)
            server = derive_server_keys(relay.x25519_public, relay.x25519_private, public)
        except RemoteProtocolError:
            client = server = None
    return Party(name, public, private, client, server, home)


def peer_private(name: str) -> bytes:
    return clamp(derive(name))


def party_named(name: str, relay: RelayIdentity, home: Addr) -> Party:
    private = peer_private(name)
    return make_party(name, private, bytes(sodium.crypto_scalarmult_base(private)), relay, home)


def relay_identity(name: str) -> RelayIdentity:
    """The identity of relay ``name`` ("r1", "r2", "rb")."""
    return RelayIdentity.from_seed(derive("relay-" + name.removeprefix("r")))


def relay_party(name: str, relay: RelayIdentity, home: Addr) -> Party:
    """Relay ``name`` as a client of ``relay``'s channels (its X25519 form)."""
    ident = relay_identity(name)
    return make_party(name, ident.x25519_private, ident.x25519_public, relay, home)


def answer_keys(name: str, relay: RelayIdentity) -> ChannelKeys:
    """Relay ``name``'s side of the channel ``relay`` opens to it: ``tx`` seals
    its answers (FROM_SERVER) to ``relay``, ``rx`` opens ``relay``'s requests."""
    ident = relay_identity(name)
    return derive_server_keys(ident.x25519_public, ident.x25519_private, relay.x25519_public)


def all_parties(relay: RelayIdentity) -> list[Party]:
    """Every key of the world, honest or not, in a fixed order."""
    parties = [party_named(n, relay, a) for n, a in (*PEERS, *STRANGERS, DENIED)]
    parties += [party_named(n, relay, ADDRESS_POOL[i]) for i, n in enumerate(FRESH)]
    # the relay's own X25519 key as a peer key: it talking to itself
    parties.append(
        make_party("self", relay.x25519_private, relay.x25519_public, relay, ADDRESS_POOL[0])
    )
    # keys X25519 refuses (all-zero, a low-order point): no channel keys at all
    parties.append(make_party("zero", None, bytes(32), relay, ADDRESS_POOL[1]))
    parties.append(make_party("low", None, b"\x01" + bytes(31), relay, ADDRESS_POOL[2]))
    # other relays, as clients of the fuzzed relay's channels
    parties += [relay_party(n, relay, a) for n, a in (*RELAYS, UNKNOWN_RELAY)]
    return parties


@dataclass
class Peer:
    party: Party
    addr: Addr
    link: RelayLink
    oracle: LinkOracle
    mute_offers: bool = False
    inbox: list[bytes] = field(default_factory=list)

    @property
    def pub(self) -> PublicKey:
        return PublicKey(self.party.public)


@dataclass
class OtherRelay:
    """An honest relay of the federation: a real core at its announced address."""

    name: str
    identity: RelayIdentity
    addr: Addr
    core: RelayCore
    party: Party
    """It as a client of the fuzzed relay (what it seals requests with)."""
    answers: ChannelKeys
    """Its side of the fuzzed relay's channel to it (``answer_keys``)."""
    inbox: list[tuple[bytes, Addr]] = field(default_factory=list)


class World:
    def __init__(
        self,
        config: RelayConfig | None = None,
        *,
        seed: int = WORLD_SEED,
        strict: bool = False,
    ) -> None:
        self.now = 0.0
        self.seed = seed
        self.strict = strict
        self.rng = random.Random(seed ^ 0x5EED)
        self.identity = RelayIdentity.from_seed(RELAY_SEED)
        self.parties = all_parties(self.identity)
        self.by_name = {p.name: p for p in self.parties}
        self.by_key = {p.public: p for p in self.parties}
        self.policy = DenyPolicy([self.by_name[DENIED[0]].public])
        self.relay = RelayCore(
            self.identity,
            config or RelayConfig(),
            self.policy,
            now=0.0,
            wall=WALL0,
            rng=random.Random(seed).randbytes,
            region="fuzz",
            announce_endpoints=tuple((str(a[0]), int(a[1])) for a in OWN_ADDRESSES),
        )
        self.relay.set_own_addresses(OWN_ADDRESSES)
        # credits on (in memory): receipts, claims and balance queries reach
        # the ledger's checks, not only "no ledger here"
        self.relay.enable_credits(Ledger(None, allows=self.policy.allows), None, 0.0)
        client_keys = {p.public: p.client for p in self.parties if p.client is not None}
        relay_keys = {
            relay_identity(n).x25519_public: answer_keys(n, self.identity)
            for n, _ in (*RELAYS, UNKNOWN_RELAY)
        }
        self.oracle = RelayOracle(self.relay, client_keys, relay_keys=relay_keys, strict=strict)
        self.relays: list[OtherRelay] = []
        for i, (name, addr) in enumerate(RELAYS):
            ident = relay_identity(name)
            core = RelayCore(
                ident,
                RelayConfig(),
                OpenPolicy(),
                now=0.0,
                wall=WALL0,
                rng=random.Random(seed * 100 + i).randbytes,
                region="fuzz",
                announce_endpoints=(host_port(addr),),
            )
            core.set_own_addresses([addr])
            party = self.by_name[name]
            self.relays.append(
                OtherRelay(name, ident, addr, core, party, answer_keys(name, self.identity))
            )
        self.relay_at = {host_port(r.addr): r for r in self.relays}
        self.relay_named = {r.name: r for r in self.relays}
        self.peers: list[Peer] = []
        self.retired: list[LinkOracle] = []
        self._links_made = 0
        for name, addr in PEERS:
            self.peers.append(self._peer(self.by_name[name], addr))
        self.by_addr = {p.addr: p for p in self.peers}
        self.peer = {p.party.name: p for p in self.peers}
        self.holdback = 0.0
        """Chance that an honest datagram is held back, to arrive later (reordered)."""
        self.held: list[tuple[bytes, Addr]] = []
        self.relay_loss = 0.0
        """Chance that a datagram to r1 or r2 is lost (so probes time out, and
        the fuzzer's answers find lookups and probes still waiting)."""
        self.frames: Counter[str] = Counter()
        """Data frames the relay delivered, per peer."""
        self.taps: list[Callable[[bytes, Addr], None]] = []
        """Called with every datagram into the relay (and its source)."""
        self.out_taps: list[Callable[[bytes, Addr], None]] = []
        """Called with every datagram out of the relay (and its destination)."""

    # ------------------------------------------------------------ peers

    def _peer(self, party: Party, addr: Addr) -> Peer:
        assert party.private is not None
        assert party.server is not None
        self._links_made += 1
        config = LinkConfig(accept_incoming=party.name != REFUSES_INCOMING)
        link = PlanLink(  # the agent's link (private offers, its home's legs too)
            PrivateKey(party.private),
            self.identity.public,
            config,
            now=self.now,
            wall=self.wall(),
            rng=random.Random(self.seed * 1000 + self._links_made).randbytes,
        )
        oracle = LinkOracle(link, party.server, strict=self.strict, name=party.name)
        return Peer(party, addr, link, oracle, mute_offers=party.name == NEVER_ANSWERS)

    def renew_link(self, peer: Peer) -> None:
        """Give a peer a new link (a known bug broke the old one)."""
        self.retired.append(peer.oracle)
        fresh = self._peer(peer.party, peer.addr)
        peer.link, peer.oracle = fresh.link, fresh.oracle

    def add_peer(self, name: str, addr: Addr) -> Peer:
        """A peer the world has never seen (for the after-fuzzing checks)."""
        party = party_named(name, self.identity, addr)
        self.parties.append(party)
        self.by_key[party.public] = party
        assert party.client is not None
        self.oracle.client_keys[party.public] = party.client
        p = self._peer(party, addr)
        self.peers.append(p)
        self.by_addr[addr] = p
        self.peer[name] = p
        return p

    # ------------------------------------------------------------ clock

    def wall(self) -> float:
        return WALL0 + self.now

    def wall_us(self) -> int:
        return int(self.wall() * 1_000_000)

    # ------------------------------------------------------------ moving datagrams

    def send(self, data: bytes, src: Addr) -> list[tuple[bytes, Addr]]:
        """One datagram into the relay (checked), its outputs routed to the peers."""
        for tap in self.taps:
            tap(data, src)
        out = self.oracle.deliver(data, src, self.now)
        self.route(out)
        return out

    def route(self, out: list[tuple[bytes, Addr]]) -> None:
        for d, dst in out:
            for tap in self.out_taps:
                tap(d, dst)
            other = self.relay_at.get(host_port(dst))
            if other is not None:
                if not (self.relay_loss and self.rng.random() < self.relay_loss):
                    other.inbox.append((d, OWN_ADDRESSES[0]))
                continue
            p = self.by_addr.get(dst)
            if p is None:
                continue  # to an address the fuzzer plays: the oracle kept the cookies
            if d[:1] == bytes((MsgType.DATA,)):
                self.frames[p.party.name] += 1
            elif p.mute_offers and d[:1] == bytes((MsgType.SESSION_OFFER,)):
                continue
            else:
                p.inbox.append(d)

    def _relays_move(self) -> bool:
        """The other relays read their inboxes; what they send the fuzzed
        relay goes in through its oracle, what they send each other to the
        other's inbox (anything else is lost)."""
        moved = False
        own = {host_port(a) for a in OWN_ADDRESSES}
        for r in self.relays:
            inbox, r.inbox = r.inbox, []
            for d, src in inbox:
                moved = True
                r.core.receive(d, src, self.now)
            for d, dst in r.core.datagrams_to_send():
                moved = True
                hp = host_port(dst)
                if hp in own:
                    self.send(d, r.addr)
                elif hp in self.relay_at:
                    self.relay_at[hp].inbox.append((d, r.addr))
        return moved

    def pump(self, rounds: int = 16) -> None:
        """Deliver honest traffic both ways until nothing moves."""
        for _ in range(rounds):
            moved = self._relays_move()
            for p in self.peers:
                if p.oracle.broken:
                    self.renew_link(p)
                outgoing = p.oracle.collect(self.now, b"")
                inbox, p.inbox = p.inbox, []
                for d in inbox:
                    moved = True
                    outgoing += p.oracle.deliver(d, self.now)
                for d in outgoing:
                    moved = True
                    if self.holdback and self.rng.random() < self.holdback:
                        self.held.append((d, p.addr))
                    else:
                        self.send(d, p.addr)
            if not moved:
                return

    def advance(self, dt: float) -> None:
        self.now += dt
        self.route(self.oracle.tick(self.now))
        for r in self.relays:
            if self.now >= r.core.next_timer():
                r.core.handle_timer(self.now)
        for p in self.peers:
            if p.oracle.broken:
                self.renew_link(p)
            for d in p.oracle.tick(self.now):
                self.send(d, p.addr)
        self.pump()

    # ------------------------------------------------------------ the live state

    def maintain(self) -> None:
        """Registrations, sessions and the pending offer back as they were."""
        now = self.now
        for p in self.peers:
            if p.link.state not in (LinkState.REGISTERED, LinkState.REGISTERING):
                p.oracle.api("connect", partial(p.link.connect, now), now)
        self.pump()
        regs = self.relay.table.regs
        for a, b in (*SESSIONS, PENDING):
            pa, pb = self.peer[a], self.peer[b]
            if pa.party.public not in regs or pb.party.public not in regs:
                continue
            if self.relay.table.by_pair.get(pair_of(pa.party.public, pb.party.public)) is None:
                pa.oracle.api("request_session", partial(pa.link.request_session, pb.pub, now), now)
        self.pump()

    def introduce_relays(self) -> None:
        """Every relay holds every other's current announcement (as after
        gossip), so the fuzzed relay knows r1 and r2 and they know it."""
        cores = [self.relay, *(r.core for r in self.relays)]
        anns = [c.announcement(self.now) for c in cores]
        for core, own in zip(cores, anns, strict=True):
            fed = core.federation
            if own is not None:
                fed.set_own(own)
            for raw in anns:
                if raw is not None and raw != own:
                    fed.learn(raw, self.now)

    def setup(self) -> World:
        self.introduce_relays()
        for p in self.peers:
            p.link.connect(self.now)
        self.pump()
        self.maintain()
        return self

    def session_id(self, a: str, b: str) -> bytes | None:
        s = self.relay.table.by_pair.get(
            pair_of(self.peer[a].party.public, self.peer[b].party.public)
        )
        return s.sid if s is not None else None

    def findings(self) -> list[Finding]:
        found = list(self.oracle.findings)
        for o in [*(p.oracle for p in self.peers), *self.retired]:
            found += o.findings
        return found

    def link_known(self) -> Counter[str]:
        known: Counter[str] = Counter()
        for o in [*(p.oracle for p in self.peers), *self.retired]:
            known.update(o.tally.known)
        return known
