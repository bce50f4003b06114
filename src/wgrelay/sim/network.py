"""``Simulation``: one seeded, virtual-time world of hosts, NAT boxes and links.

A scenario builds the topology (``add_host``, ``add_nat``), starts whatever
runs on the hosts (production shells given ``host.runtime()``, ``SimWireGuard``
stand-ins, plain coroutines via ``spawn``) and drives the loop with ``run``,
``run_for`` or ``run_until``. Everything happens on one asyncio loop whose
clock jumps from event to event, so a run is fast and, for a given seed and
program, identical every time: ``trace_digest()`` proves it.

Addresses: hosts on the internet get IPv4 addresses from 198.18.0.0/15 (and,
with ``ipv6=True``, IPv6 from 2001:db8::/32); each NAT box gets its own LAN,
10.N.M.0/24 by default, with hosts from .2 up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from wgrelay.sim.engine import Network, Partition
from wgrelay.sim.link import LinkSpec
from wgrelay.sim.loop import SimulationDeadlock, SimulationError, VirtualTimeLoop
from wgrelay.sim.nat import Endpoint, NatBehavior, NatKind
from wgrelay.sim.stream import StreamNet
from wgrelay.sim.topology import Host, Nat, Realm
from wgrelay.sim.trace import TraceRecord

log = logging.getLogger(__name__)

_T = TypeVar("_T")

INTERNET_IPV6_PREFIX = ipaddress.IPv6Network("2001:db8::/32")
"""RFC 3849's documentation prefix."""
DEFAULT_POLL_S = 0.05
"""How often ``run_until`` checks its condition, in virtual seconds."""

NatSpec = Nat | NatKind | NatBehavior | None
"""Where ``add_host`` puts a host: behind an existing box, behind a new box of
that kind or behaviour, or (None, ``NatKind.NONE``) on the internet."""


class Simulation:
    """A deterministic simulated network on a virtual-time asyncio loop."""

    def __init__(self, seed: int, *, trace: bool = True, inline_executor: bool = True) -> None:
        self.seed = seed
        self.loop = VirtualTimeLoop(inline_executor=inline_executor)
        self.loop.set_exception_handler(self._on_loop_error)
        self.network = Network(self.loop, seed, trace)
        self.streams = StreamNet(self.network)
        """Simulated TCP/TLS connections (``wgrelay.sim.stream``)."""
        self.rng = self.network.derive_rng("scenario")
        """A seeded stream for the scenario's own choices."""
        self.loop_errors: list[dict[str, Any]] = []
        """Contexts of errors asyncio reported (a callback raised, a task's
        exception was never retrieved...). A clean scenario leaves it empty."""
        self._hosts: dict[str, Host] = {}
        self._nats: dict[str, Nat] = {}
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._next_ipv6 = 1
        self._receiver_errors_seen = 0
        self._closed = False

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ clocks

    def now(self) -> float:
        """Virtual monotonic seconds since the start."""
        return self.loop.time()

    def wall(self) -> float:
        """Virtual Unix time."""
        return self.loop.wall()

    # ------------------------------------------------------------ topology

    def add_host(
        self,
        name: str,
        *,
        behind: NatSpec = None,
        link: LinkSpec = LinkSpec(),  # noqa: B008 (frozen: sharing it is safe)
        nat_link: LinkSpec = LinkSpec(),  # noqa: B008
        address: str | None = None,
        ipv6: bool = False,
    ) -> Host:
        """A host with one IPv4 address (and one IPv6 with ``ipv6``).

        ``behind`` a ``NatKind``/``NatBehavior`` creates a box ``<name>-nat``
        for this host alone, with ``nat_link`` as its WAN link.
        """
        self._check_name(name)
        if isinstance(behind, NatBehavior) or (
            isinstance(behind, NatKind) and behind is not NatKind.NONE
        ):
            behind = self.add_nat(f"{name}-nat", behind, link=nat_link)
        realm = self.network.internet if not isinstance(behind, Nat) else behind.inner
        ipv4 = self._address_in(realm, address)
        v6 = [self._allocate_ipv6()] if ipv6 else []
        host = Host(self.network, name, realm, [ipv4], v6, link, self.streams)
        realm.attach(ipv4, host)
        for ip in v6:
            self._route_ipv6(ip, host)
        self._hosts[name] = host
        return host

    def add_nat(
        self,
        name: str,
        behavior: NatKind | NatBehavior,
        *,
        behind: Nat | None = None,
        link: LinkSpec = LinkSpec(),  # noqa: B008
        public_address: str | None = None,
        lan: str | None = None,
    ) -> Nat:
        """A NAT box on the internet, or ``behind`` another box (carrier-grade NAT)."""
        self._check_name(name)
        if isinstance(behavior, NatKind):
            preset = behavior.behavior
            if preset is None:
                raise ValueError("NatKind.NONE is no NAT box: put the host on the internet")
            behavior = preset
        outer = self.network.internet if behind is None else behind.inner
        public_ip = self._address_in(outer, public_address)
        n = len(self._nats)
        subnet = ipaddress.IPv4Network(lan or f"10.{n // 256}.{n % 256}.0/24")
        nat = Nat(self.network, name, behavior, outer, public_ip, subnet, link)
        outer.attach(public_ip, nat)
        self._nats[name] = nat
        return nat

    def host(self, name: str) -> Host:
        return self._hosts[name]

    def nat(self, name: str) -> Nat:
        return self._nats[name]

    @property
    def hosts(self) -> tuple[Host, ...]:
        return tuple(self._hosts.values())

    @property
    def nats(self) -> tuple[Nat, ...]:
        return tuple(self._nats.values())

    def public_endpoint(self, host: Host, port: int, remote: Endpoint) -> Endpoint | None:
        """Where ``host:port``'s packets to ``remote`` currently appear to come
        from on the internet (what a STUN server there would see); None if a
        NAT on the way has no live mapping for it."""
        endpoint: Endpoint = (host.addresses[0], port)
        nat = host.nat
        while nat is not None:
            mapped = nat.mapping_of(endpoint, remote)
            if mapped is None:
                return None
            endpoint = mapped
            nat = nat.outer.nat
        return endpoint

    def _check_name(self, name: str) -> None:
        if name in self._hosts or name in self._nats:
            raise ValueError(f"a host or NAT named {name!r} already exists")

    def _address_in(self, realm: Realm, address: str | None) -> str:
        if address is None:
            return realm.allocate()
        ip = ipaddress.IPv4Address(address)
        return str(ip)

    def _allocate_ipv6(self) -> str:
        ip = INTERNET_IPV6_PREFIX.network_address + self._next_ipv6
        self._next_ipv6 += 1
        return str(ip)

    def _route_ipv6(self, ip: str, host: Host) -> None:
        """Make ``ip`` known in the host's realm and, via each box, in every realm above."""
        realm = host.realm
        realm.attach(ip, host)
        nat = realm.nat
        while nat is not None:
            nat.outer.attach(ip, nat)
            nat = nat.outer.nat

    # ------------------------------------------------------------ partitions

    def partition(self, a: Iterable[Host], b: Iterable[Host]) -> Partition:
        """Drop every packet between a host of ``a`` and a host of ``b`` (both
        ways, in flight too) until ``heal()``; returns a handle to heal just this.
        Streams across it break after ``STREAM_BREAK_TIMEOUT_S`` unless healed."""
        p = self.network.partition(frozenset(a), frozenset(b))
        self.streams.partitioned()
        return p

    def heal(self) -> None:
        """Heal every partition."""
        self.network.heal()

    def set_route_delay(self, a: Iterable[Host], b: Iterable[Host], delay_s: float) -> None:
        """Every packet between a host of ``a`` and a host of ``b`` (both ways)
        takes ``delay_s`` more, one way, than its access links say; 0 removes
        it. Packets already in flight keep the delay they had."""
        if delay_s < 0:
            raise ValueError("a route delay is not negative")
        delays = self.network.route_delays
        for x in a:
            for y in b:
                for pair in ((x, y), (y, x)):
                    if delay_s:
                        delays[pair] = delay_s
                    else:
                        delays.pop(pair, None)

    # ------------------------------------------------------------ running

    def spawn(self, coro: Coroutine[Any, Any, _T], *, name: str | None = None) -> asyncio.Task[_T]:
        """Start a task on the simulation's loop; the simulation keeps a
        reference and cancels it on ``close()``."""
        task = self.loop.create_task(coro, name=name)
        self._tasks[task] = None
        task.add_done_callback(self._tasks.pop)
        return task

    def run(self, awaitable: Awaitable[_T]) -> _T:
        """Run until ``awaitable`` is done; its result.

        Raises ``SimulationDeadlock`` if it can never finish, and
        ``SimulationError`` if a datagram receiver raised meanwhile.
        """
        if self._closed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never awaited: say so once, not as a warning at exit
            raise SimulationError("this simulation is closed")
        result = self.loop.run_until_complete(awaitable)
        self._check_receivers()
        return result

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.run(asyncio.sleep(seconds))

    def run_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout_s: float,
        poll_s: float = DEFAULT_POLL_S,
    ) -> float:
        """Run until ``condition()`` holds (checked every ``poll_s``); the
        virtual time it first did. ``TimeoutError`` after ``timeout_s``."""
        return self.run(self.wait_until(condition, timeout_s=timeout_s, poll_s=poll_s))

    async def wait_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout_s: float,
        poll_s: float = DEFAULT_POLL_S,
    ) -> float:
        """``run_until`` for use inside a scenario coroutine."""
        deadline = self.loop.time() + timeout_s
        while not condition():
            now = self.loop.time()
            if now >= deadline:
                raise TimeoutError(f"condition still false after {timeout_s} virtual seconds")
            await asyncio.sleep(min(poll_s, deadline - now))
        return self.loop.time()

    def close(self) -> None:
        """Cancel every task still running and close the loop; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self.loop
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        try:
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except SimulationDeadlock as e:
            log.warning("tasks did not finish when cancelled: %s", e)
        finally:
            loop.close()

    def _check_receivers(self) -> None:
        errors = self.network.receiver_errors
        if len(errors) > self._receiver_errors_seen:
            first = errors[self._receiver_errors_seen]
            self._receiver_errors_seen = len(errors)
            raise SimulationError(f"a datagram receiver raised: {first!r}") from first

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)
        loop.default_exception_handler(context)

    # ------------------------------------------------------------ results

    @property
    def trace(self) -> list[TraceRecord]:
        """Every trace record so far (empty when tracing is off)."""
        return list(self.network.trace)

    def trace_digest(self) -> str:
        """SHA-256 of the whole trace: equal for equal runs."""
        return self.network.trace.digest()

    @property
    def drops(self) -> dict[str, int]:
        """Dropped datagrams by reason."""
        return dict(self.network.drops)
