"""A node proxy's HBONE listener in a process of its own, for the memory tests (run as a script).

`python hbone_listener_proc.py CA_CERT CA_KEY [LIMIT=VALUE ...]`: serves `HboneServer` on 127.0.0.1 (an
ephemeral port) under uvloop, as the node proxy does, with the server identity issued by the given CA and
an echo handler; `LIMIT=VALUE` pairs override `HandshakeLimits` fields. Prints the port, then answers
each line on stdin with one JSON line: {"rss_mb", "pending", "refused" (the listener's), "connections",
"process_refused" (`ambient.hbone.refusals`, non-zero reasons)}.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import sys
from pathlib import Path

import uvloop

from ambient.hbone import refusals
from ambient.hbone.connection import HboneStream
from ambient.hbone.protocol import ConnectRequest
from ambient.hbone.server import Accept, Decision, HandshakeLimits, HboneServer
from ambient.identity.ca import LocalCA
from ambient.tls.verify import PeerIdentity

SERVER_ID = "spiffe://cluster.local/ns/mem/sa/server"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def echo(stream: HboneStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def handler(_req: ConnectRequest, _peer: PeerIdentity) -> Decision:
    return Accept(serve=echo)


async def main(ca: LocalCA) -> None:
    fields: dict[str, float] = {}
    for arg in sys.argv[3:]:
        name, _, value = arg.partition("=")
        fields[name] = float(value) if "timeout" in name else int(value)
    limits = HandshakeLimits(**fields)  # type: ignore[arg-type]
    async with HboneServer(socket.create_server(("127.0.0.1", 0)), ca.issue(SERVER_ID), handler,
                           limits=limits) as server:
        print(server.address[1], flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            gc.collect()
            print(json.dumps({"rss_mb": rss_mb(), "pending": server.pending_handshakes,
                              "refused": server.stats.refused, "connections": len(server._conns),
                              "process_refused": {k: v for k, v in refusals.snapshot().items() if v}}), flush=True)


if __name__ == "__main__":
    uvloop.run(main(LocalCA.load(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes())))
