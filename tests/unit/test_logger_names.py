"""A module's logger is named after the module (or a package above it), so `logger=` filters, log level
settings and the logger field of a log line lead to the right file. The exceptions are channels: loggers
that several modules write on purpose (access logs, one component's log across its modules)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

CHANNELS = {
    "ambient.apiserver",  # the API server's log (api/server.py and its helpers)
    "ambient.controllers", "ambient.controllers.gateways", "ambient.controllers.waypoints",
    "ambient.kubelet",
    "ambient.cni.agent",  # the node agent's log, whichever entry point runs it
    "ambient.controlplane",  # `ambient controlplane` runs the control plane in the CLI process
    "ambient.waypoint.access", "ambient.gateway.access",  # access logs
    "httpx",  # a library's logger, quietened
}


def _module(path: Path) -> str:
    parts = path.with_suffix("").relative_to(SRC).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _logger_names(path: Path) -> list[tuple[int, str]]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append((node.lineno, node.args[0].value))
    return names


def test_loggers_are_named_after_their_module() -> None:
    wrong = [f"{path.relative_to(SRC)}:{line}: {name!r} (module {_module(path)})"
             for path in sorted(SRC.rglob("*.py")) for line, name in _logger_names(path)
             if name not in CHANNELS and not (_module(path) == name or _module(path).startswith(name + "."))]
    assert wrong == []
