"""Static state source: a YAML/JSON file in the model's shape (the `state.static` loader), applied by
the store's single writer, and re-applied whenever the file changes (mtime poll), so a standalone proxy
or a test can change policies live.

Invariant: a file that does not load leaves the current state untouched (the loader validates the whole
document before anything is applied) and is reported once per change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ambient.core.errors import AmbientError
from ambient.state.static import load_state_file
from ambient.state.store import StateWriter
from ambient.ztunnel.errors import ConfigError

log = logging.getLogger("ambient.ztunnel.static_config")


class StaticStateSource:
    def __init__(self, path: str | Path, poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def load_into(self, writer: StateWriter) -> None:
        try:
            delta = load_state_file(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read static config {self.path}: {exc.strerror or exc}") from exc
        change = writer.apply(delta)
        log.info(
            "static config %s applied: %d workload(s), %d service(s), %d polic(ies)",
            self.path, len(delta.workloads), len(delta.services), len(delta.policies),
        )
        del change

    async def run(self, writer: StateWriter, ready: Callable[[], None]) -> None:
        stamp = self._stamp()
        self.load_into(writer)  # the first load must succeed: the proxy refuses to start on a bad file
        ready()
        while True:
            await asyncio.sleep(self.poll_interval)
            now = self._stamp()
            if now == stamp or now is None:
                continue
            stamp = now
            try:
                self.load_into(writer)
            except AmbientError as exc:
                log.error("static config %s not applied (keeping the previous state): %s", self.path, exc)
