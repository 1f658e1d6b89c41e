"""core.process: a stop signal becomes a graceful stop (first) or cancellation (second, or when the
component registered none); a stop by signal exits 0 without a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

SCRIPT = r'''
import asyncio, sys
from ambient.core import process

graceful = sys.argv[1] == "graceful"

async def main(shutdown):
    stop = asyncio.Event()
    if graceful:
        shutdown.on_signal(lambda: (print("draining", flush=True), stop.set()))
    print("ready", flush=True)
    try:
        await stop.wait()
        print("drained", flush=True)
        if sys.argv[2:] == ["slow"]:
            await asyncio.sleep(30)  # a drain that does not end: a second signal cuts it
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        raise

process.run(main)
print("exited", flush=True)
'''


def start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(("mode", "signals", "lines"), [
    (["graceful"], [signal.SIGTERM], ["draining", "drained", "exited"]),
    (["graceful", "slow"], [signal.SIGTERM, signal.SIGINT], ["draining", "drained", "cancelled", "exited"]),
    (["plain"], [signal.SIGINT], ["cancelled", "exited"]),
])
def test_stop_signals(mode: list[str], signals: list[signal.Signals], lines: list[str]) -> None:
    proc = start(*mode)
    for sig in signals:
        time.sleep(0.2)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.split() == lines
    assert "Traceback" not in err
