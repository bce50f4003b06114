"""Small asyncio helpers shared by the relay and the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELOAD_SIGNAL = signal.SIGHUP


@contextlib.contextmanager
def stop_on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``callback`` while the block runs."""
    with on_signals(STOP_SIGNALS, callback):
        yield


@contextlib.contextmanager
def on_signals(signals: Iterable[signal.Signals], callback: Callable[[], None]) -> Iterator[None]:
    """``signals`` call ``callback`` (on the loop) while the block runs.

    Signal handlers can only be installed from the main thread; elsewhere (a
    daemon embedded in a test's worker thread) the block runs without them and
    the caller stops the daemon itself.
    """
    loop = asyncio.get_running_loop()
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, callback)
        except (RuntimeError, ValueError):
            break
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if sig == signal.SIGHUP:
                # asyncio puts the default action back, which for SIGHUP is
                # to terminate: a reload asked for while the daemon saves its
                # state on the way out must not kill it half-way
                signal.signal(signal.SIGHUP, signal.SIG_IGN)


class SerialRunner:
    """Runs ``work`` once per ``request``, one run at a time: a request that
    comes during a run makes another run after it, so the last request always
    sees the latest state (a SIGHUP reload after the last edit). A failing run
    is logged on ``log``; the next request runs again."""

    def __init__(self, work: Callable[[], Awaitable[None]], log: logging.Logger) -> None:
        self._work = work
        self._log = log
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """A signal handler (on the loop)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._work()
            except Exception:  # a bug in a reload must not stop the daemon
                self._log.exception("reload failed; the running settings stay")
            if not self._again:
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serially_on_signal(sig: signal.Signals, runner: SerialRunner) -> AsyncIterator[None]:
    """``sig`` requests a run of ``runner`` while the block runs; a run under
    way at the end is cancelled."""
    try:
        with on_signals((sig,), runner.request):
            yield
    finally:
        await runner.close()
