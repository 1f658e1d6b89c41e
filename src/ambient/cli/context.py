"""What every command gets from the global options: the cluster name, the state dir, an API client.

Commands read it with `state(ctx)`. The API client is created lazily (and only once) so that commands
that never talk to the API server (`version`, `cluster create`, `--help`) neither import httpx nor need a
running cluster. Tests may pass their own `CliState(client_factory=...)` as the Click `obj`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ambient.api.client import ApiClient


@dataclass
class CliState:
    """Global options plus the lazily built API client."""

    cluster: str = "ambient"
    state_dir: Path | None = None  # None: the default for `cluster` (see ambient.api.client)
    client_factory: Callable[[CliState], Any] | None = None
    _client: Any = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        """The API server's Unix socket for this cluster / state dir."""
        if self.state_dir is not None:
            return self.state_dir / "apiserver.sock"
        from ambient.api.client import default_socket_path

        return Path(default_socket_path(self.cluster))

    def client(self) -> ApiClient:
        """The API client (built on first use)."""
        if self._client is None:
            if self.client_factory is not None:
                self._client = self.client_factory(self)
            else:
                from ambient.api.client import ApiClient

                self._client = ApiClient(self.socket_path)
        return self._client  # type: ignore[no-any-return]

    def close(self) -> None:
        closer = getattr(self._client, "close", None)
        if callable(closer):
            closer()
        self._client = None

def state(ctx: typer.Context) -> CliState:
    """The `CliState` of this invocation (set by the root callback)."""
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, CliState):
        obj = root.obj = CliState()
    return obj
