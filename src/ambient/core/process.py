"""The one process bootstrap every component's entry point uses: logging, signals, the event loop.

Role: `configure_logging(level)` sets the root logger once (one format, third-party chatter at WARNING);
`run(main)` runs the component's root coroutine under asyncio (uvloop when asked and installed) with
SIGTERM/SIGINT turned into cancellation of that root task. A component that drains first (the proxies)
registers its graceful stop with `Shutdown.on_signal(stop)`: the first signal calls it and the root
returns when the component has drained; a second signal, or the first when nothing is registered,
cancels the root task (its TaskGroups and `finally` blocks clean up).

Invariants: entry points never install signal handlers or call `logging.basicConfig` themselves; a stop by
signal is a normal exit (no traceback, exit status 0); nothing here reads or writes `os.environ`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One line per HTTP request from these drowns the component's own lines.
QUIET_LOGGERS = ("httpx", "httpcore", "asyncio", "aiohttp.access")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def configure_logging(level: str | int = "INFO", *, stream: TextIO | None = None, fmt: str = DEFAULT_FORMAT,
                      quiet: tuple[str, ...] = QUIET_LOGGERS) -> None:
    """Set up the root logger for a component process (`level` by name, any case, or number)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    logging.basicConfig(level=level, stream=stream or sys.stderr, format=fmt)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


class Shutdown:
    """What the root coroutine gets from `run`: where to register a graceful stop, and whether a stop
    signal arrived (`requested`)."""

    def __init__(self) -> None:
        self.requested = False
        self._graceful: Callable[[], None] | None = None
        self._root: asyncio.Task[None] | None = None

    def on_signal(self, stop: Callable[[], None]) -> None:
        """Call `stop` on the first SIGTERM/SIGINT instead of cancelling the root task."""
        self._graceful = stop

    def signal(self) -> None:
        first = not self.requested
        self.requested = True
        if first and self._graceful is not None:
            self._graceful()
        elif self._root is not None:
            self._root.cancel()


async def _root(main: Callable[[Shutdown], Awaitable[None]], shutdown: Shutdown) -> None:
    shutdown._root = asyncio.current_task()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, shutdown.signal)
    try:
        await main(shutdown)
    except asyncio.CancelledError:
        if not shutdown.requested:
            raise


def run(main: Callable[[Shutdown], Awaitable[None]], *, use_uvloop: bool = False) -> None:
    """Run `main(shutdown)` as the process's root task until it returns or a stop signal ends it."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # optional speed-up: the default loop behaves the same
            use_uvloop = False
    shutdown = Shutdown()
    try:
        if use_uvloop:
            uvloop.run(_root(main, shutdown))
        else:
            asyncio.run(_root(main, shutdown))
    except KeyboardInterrupt:  # a signal before the loop's handlers were in place
        pass
