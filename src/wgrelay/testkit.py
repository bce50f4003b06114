"""A test kit shipped in the package: cores on a fake clock, datagrams by hand.

Like httpcore's mock backends or wireguard-go's ``ChannelBind``, it lets any
test (ours, or a user's) drive the production sans-I/O cores without sockets
or clocks: ``CoreNet`` holds one ``RelayCore`` and any number of ``RelayLink``
clients, moves their datagrams until nothing moves, and advances time by hand,
so every deadline is exact. For whole processes on a simulated network (NATs,
loss, the agent), use ``wgrelay.sim`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgrelay.client.events import LinkEvent, LinkRegistered
from wgrelay.client.link import LinkConfig, RelayLink
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore

WALL0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return WALL0 + self.now


class Allow:
    description = "test"

    def __init__(self) -> None:
        self.denied: set[bytes] = set()

    def allows(self, key: bytes) -> bool:
        return key not in self.denied

    def refresh(self) -> None:
        return None


@dataclass
class Client:
    key: PrivateKey
    link: RelayLink
    addr: tuple[str, int]
    events: list[LinkEvent] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)

    @property
    def pub(self) -> PublicKey:
        return self.key.public_key()


class CoreNet:
    """One relay core and any number of links, datagrams moved by hand."""

    def __init__(self, config: RelayConfig | None = None) -> None:
        self.clock = Clock()
        self.ident = RelayIdentity.generate()
        self.policy = Allow()
        self.relay = RelayCore(
            self.ident, config or RelayConfig(), self.policy, now=0.0, wall=WALL0
        )
        self.clients: list[Client] = []
        self.to_relay: list[tuple[bytes, tuple[str, int]]] = []
        self.replies: list[tuple[bytes, tuple[object, ...]]] = []

    def client(self, accept: bool = True, link_class: type[RelayLink] = RelayLink) -> Client:
        key = PrivateKey.generate()
        link = link_class(
            key,
            self.ident.public,
            LinkConfig(),
            now=self.clock.now,
            wall=self.clock.wall(),
            accept_offer=lambda _p: accept,
        )
        c = Client(key, link, ("198.51.100.1", 40000 + len(self.clients)))
        self.clients.append(c)
        return c

    def run(self, rounds: int = 10) -> None:
        now = self.clock.now
        for _ in range(rounds):
            moved = False
            for c in self.clients:
                for d in c.link.datagrams_to_send():
                    c.sent.append(d)
                    self.to_relay.append((d, c.addr))
            for d, addr in self.to_relay:
                moved = True
                self.relay.receive(d, addr, now)
            self.to_relay.clear()
            for d, dst in self.relay.datagrams_to_send():
                self.replies.append((d, dst))
                for c in self.clients:
                    if c.addr == dst:
                        moved = True
                        c.link.receive(d, now)
            for c in self.clients:
                while (ev := c.link.next_event()) is not None:
                    c.events.append(ev)
            if not moved:
                return

    def advance(self, dt: float) -> None:
        self.clock.now += dt
        self.relay.handle_timer(self.clock.now)
        for c in self.clients:
            c.link.handle_timer(self.clock.now)
        self.run()


def registered(net: CoreNet, *clients: Client) -> None:
    """Connect each client and run until each says it is registered."""
    for c in clients:
        c.link.connect(net.clock.now)
    net.run()
    for c in clients:
        if not any(isinstance(e, LinkRegistered) for e in c.events):
            raise AssertionError(f"client at {c.addr} did not register")
