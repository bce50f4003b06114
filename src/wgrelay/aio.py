"""Small asyncio helpers shared by the relay and the agent."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator

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
