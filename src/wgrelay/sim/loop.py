"""An asyncio event loop on a virtual clock that jumps instead of waiting.

Theory of operation
-------------------
asyncio's ``_run_once`` computes how long it may sleep (until the next
scheduled callback, ``None`` when nothing is scheduled, 0 when callbacks are
ready) and hands that to ``selector.select(timeout)``. ``VirtualTimeLoop``
plugs in a selector that never reports a file descriptor ready and, instead of
sleeping, moves the loop's clock forward by the timeout. The next iteration
then runs the callbacks that became due. This is trio's
``MockClock(autojump_threshold=0)``: an hour of virtual time passes in
milliseconds when nothing else is going on, and ``asyncio.sleep``,
``asyncio.timeout``, ``call_at``, tasks and futures all work unchanged because
they only ever ask ``loop.time()``.

The clock jumps exactly to the due callback's deadline (never an ``a + (b - a)``
that rounds), so tests can assert exact virtual times.

Packets do not go through asyncio's timer heap (which compares its handles in
Python, several times per packet): the network is an ``EventSource`` with its
own heap, and while the loop would sleep, the selector runs the source's
events in time order itself, until one of them readies an asyncio callback or
an asyncio timer comes due. Events due at the same instant as a timer run
first. This reads two private attributes of asyncio's ``BaseEventLoop``
(``_ready`` and ``_scheduled``, unchanged since Python 3.4).

A ``select(None)`` means nothing is ready and nothing is scheduled: in a real
loop the process would sleep until some file descriptor or signal woke it,
which in a simulation never happens. That is a deadlock in the scenario, and it
raises ``SimulationDeadlock`` out of ``run_until_complete`` instead of hanging.

Threads are not allowed in a simulation: a thread runs in real time, so when
its result lands would depend on the host machine and the run would no longer
be deterministic (and ``call_soon_threadsafe`` wakes the loop through a
self-pipe this selector never reports). ``run_in_executor`` (and therefore
``asyncio.to_thread``) runs the function *inline*, on the loop thread, at the
moment it is submitted, so shells that push a short synchronous call (a
WireGuard backend read) to a thread still run unchanged and deterministically.
Such a function must not block or wait for the loop; ``inline_executor=False``
makes any executor use an error instead.

Real sockets and subprocesses cannot work here either (their readiness is never
reported): a scenario that awaits one ends in ``SimulationDeadlock``. Signal
handlers are refused for the same reason (their callbacks would never run, and
Ctrl-C would be swallowed).
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, TypeVarTuple

from wgrelay.errors import WgRelayError

EPOCH_S = 1_700_000_000.0
"""The virtual wall clock at virtual time 0 (2023-11-14, a fixed date so wall
timestamps are reproducible)."""

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class SimulationError(WgRelayError):
    """A simulation was misused or a scenario went wrong (a bug, not a network event)."""


class SimulationDeadlock(SimulationError):
    """The loop would sleep forever: nothing is ready and nothing is scheduled."""


class EventSource(Protocol):
    """Timed events kept outside asyncio's timer heap (the network's packets).

    The loop asks for the next time whenever it would sleep, moves the clock
    there and calls ``run_due_events``, which may call into any code (datagram
    receivers) but must not block.
    """

    def next_event_time(self) -> float:
        """When the earliest pending event is due; ``math.inf`` if none."""
        ...

    def run_due_events(self) -> None:
        """Process every event due at the loop's current time."""
        ...


def _fd_of(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        return fileobj
    return int(fileobj.fileno())


class _VirtualSelector(selectors.BaseSelector):
    """Keeps registrations (asyncio's self-pipe) but never reports readiness."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd_of(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(_fd_of(fileobj))

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._loop._idle(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return MappingProxyType(self._keys)

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual and jumps to the next event.

    ``time()`` starts at 0.0; ``wall()`` is ``EPOCH_S + time()``. Same program,
    same inputs: same order of callbacks, every time.
    """

    def __init__(self, *, inline_executor: bool = True) -> None:
        self._virtual_now = 0.0
        self._inline_executor = inline_executor
        self._source: EventSource | None = None
        super().__init__(_VirtualSelector(self))

    def attach_event_source(self, source: EventSource) -> None:
        """Let ``source``'s events drive the clock too (one source per loop)."""
        if self._source is not None:
            raise SimulationError("this loop already has an event source")
        self._source = source

    def time(self) -> float:
        return self._virtual_now

    def wall(self) -> float:
        """The virtual wall clock (Unix seconds)."""
        return EPOCH_S + self._virtual_now

    def _idle(self, timeout: float | None) -> None:
        """What the selector does instead of sleeping for ``timeout`` seconds.

        ``timeout`` is asyncio's: 0 when callbacks are ready, the time to the
        next timer, None when nothing is scheduled. Before moving the clock
        there, the event source's earlier events run here, each at its own
        time, until one of them makes an asyncio callback ready or a new timer
        comes due first (asyncio then runs it in this same iteration).
        """
        now = self._virtual_now
        if timeout is None:
            limit = math.inf
        elif timeout <= 0:
            limit = now
        else:
            limit = self._next_timer(now + timeout)
        source = self._source
        if source is not None:
            ready = self._ready  # type: ignore[attr-defined]
            while True:
                at = source.next_event_time()
                if at > limit or at == math.inf:
                    break
                if at > self._virtual_now:
                    self._virtual_now = at
                source.run_due_events()
                if ready:
                    return
                if limit > self._virtual_now:
                    limit = self._next_timer(limit)
        if limit == math.inf:
            raise SimulationDeadlock(self._deadlock_message())
        if limit > self._virtual_now:
            self._virtual_now = limit

    def _next_timer(self, limit: float) -> float:
        """The earliest asyncio timer if it is due by ``limit``, else ``limit``.

        Landing exactly on a timer's deadline (not ``now + (when - now)``,
        which can round below it) is what makes virtual times exact.
        """
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            when = scheduled[0].when()
            if when < limit:
                return when
        return limit

    def _deadlock_message(self) -> str:
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        waiting = ", ".join(sorted(_describe(t) for t in tasks)[:5])
        more = f" and {len(tasks) - 5} more" if len(tasks) > 5 else ""
        return (
            f"simulation deadlock at t={self._virtual_now:.6f}s: nothing is scheduled, "
            f"so nothing can ever wake the {len(tasks)} waiting task(s): {waiting}{more}"
        )

    def add_signal_handler(self, sig: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> None:
        """Refused: the handler would run only once the loop reads its wake-up
        pipe, which this loop never does, so SIGINT and SIGTERM would be
        swallowed and the process could not be stopped. Shells that ask
        (``wgrelay.aio.stop_on_signals``) carry on without a handler, and the
        signals keep their default effect on a simulation's process."""
        raise RuntimeError("a virtual-time loop takes no signal handlers")

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        """Run ``func(*args)`` now, on the loop thread (see the module docstring)."""
        if not self._inline_executor:
            raise SimulationError(
                "threads are not allowed in a simulation (they break determinism); "
                "this loop was created with inline_executor=False"
            )
        future: asyncio.Future[_T] = self.create_future()
        try:
            result = func(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:  # delivered to the awaiting task, as an executor would
            future.set_exception(e)
        else:
            future.set_result(result)
        return future


def _describe(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()}({name})"
