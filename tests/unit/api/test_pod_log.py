"""`pods/log`: `sinceSeconds` / `sinceTime` by the time each line starts with, then `tailLines`, then
`limitBytes` (the pure pieces table-tested; `serve_log` over HTTP on loopback)."""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ambient.api.errors import ValidationError
from ambient.api.pods import (
    LineStamper,
    line_time,
    parse_since,
    rfc3339_nano,
    serve_log,
    serve_previous_log,
    since_offset,
)

T0 = calendar.timegm((2026, 12, 6, 6, 0, 0, 0, 0, 0))


def _local(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


@pytest.mark.parametrize(("line", "want"), [
    (b"2026-12-06T06:00:00Z\tinfo\taccess\tconnection complete", T0),
    (b"2026-12-06T06:00:00.250000Z x", T0 + 0.25),
    (b"2026-12-06T08:00:00+02:00 x", T0),
    (b"2026-12-06T05:30:00-00:30 x", T0),
    (b"==== 2026-12-06T06:00:00Z supervisor: restarting ztunnel-node-1 ====", T0),
    (b'{"time": "2026-12-06T06:00:00.000000Z", "level": "info"}', T0),
    (b'{"time":"2026-12-06T06:00:00Z"}', T0),
    (b"2026-12-06 06:00:00,500\tINFO\tambient.ztunnel\tready", _local("2026-12-06 06:00:00") + 0.5),
    (b"Traceback (most recent call last):", None),
    (b"  2026-12-06T06:00:00Z indented", None),
    (b"", None),
    (b"2026-13-45T99:00:00Z nonsense", None),
])
def test_line_time(line: bytes, want: float | None) -> None:
    got = line_time(line)
    assert got == pytest.approx(want) if want is not None else got is None


def _log(*pairs: tuple[int | None, str]) -> bytes:
    """Lines at T0 + seconds (None: a line without a timestamp)."""
    out = []
    for offset, text in pairs:
        stamp = "" if offset is None else time.strftime("%Y-%m-%dT%H:%M:%SZ\t", time.gmtime(T0 + offset))
        out.append(f"{stamp}{text}\n")
    return "".join(out).encode()


LOG = _log((0, "a"), (None, "a-cont"), (10, "b"), (None, "b-cont"), (20, "c"))


@pytest.mark.parametrize(("since", "kept"), [
    (T0 - 5, ["a", "a-cont", "b", "b-cont", "c"]),
    (T0, ["a", "a-cont", "b", "b-cont", "c"]),
    (T0 + 1, ["b", "b-cont", "c"]),  # a's continuation goes with a
    (T0 + 10, ["b", "b-cont", "c"]),
    (T0 + 15, ["c"]),
    (T0 + 21, []),
])
def test_since_offset_keeps_lines_with_their_timed_line(since: float, kept: list[str]) -> None:
    rest = LOG[since_offset(LOG, since, mtime=0.0):].decode().splitlines()
    assert [line.split("\t")[-1] for line in rest] == kept


def test_since_offset_untimed_prefix_and_untimed_files() -> None:
    data = b"starting\n" + _log((10, "x"))
    assert data[since_offset(data, T0 + 5, 0.0):].endswith(b"x\n") and since_offset(data, T0 + 5, 0.0) == 0
    plain = b"hello\nworld\n"  # no timestamps at all: the file's mtime decides for all of it
    assert since_offset(plain, T0, mtime=T0 + 1) == 0
    assert since_offset(plain, T0, mtime=T0 - 1) == len(plain)
    assert since_offset(b"", T0, 0.0) == 0


def test_parse_since_validates_as_kubernetes() -> None:
    assert parse_since({}, T0) is None
    assert parse_since({"sinceSeconds": "30"}, T0) == T0 - 30
    assert parse_since({"sinceTime": "2026-12-06T06:00:00Z"}, 0.0) == T0
    assert parse_since({"sinceTime": "2026-12-06T06:00:00.5+00:00"}, 0.0) == T0 + 0.5
    for query, message in (({"sinceSeconds": "0"}, "greater than 0"), ({"sinceSeconds": "x"}, "integer"),
                           ({"sinceTime": "yesterday"}, "RFC 3339"), ({"sinceTime": "2026-12-06 06:00:00"}, "RFC 3339"),
                           ({"sinceSeconds": "5", "sinceTime": "2026-12-06T06:00:00Z"}, "at most one")):
        with pytest.raises(ValidationError, match=message):
            parse_since(query, T0)


async def _serve(serve: Callable[[web.Request], Awaitable[web.StreamResponse]],
                 query: dict[str, str]) -> tuple[int, str]:
    """(status, body) of `GET /log?query` answered by `serve`; a ValidationError is a 400 with its message."""
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await serve(request)
        except ValidationError as exc:
            return web.Response(status=400, text=exc.message)

    app = web.Application()
    app.router.add_get("/log", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/log", params=query)
        return resp.status, await resp.text()


async def _get(path: Path, query: dict[str, str]) -> tuple[int, str]:
    async def still_there() -> bool:
        return False

    return await _serve(lambda request: serve_log(request, {}, path, still_there), query)


async def test_serve_log_applies_since_then_tail_then_limit(tmp_path: Path) -> None:
    now = time.time()
    lines: list[Any] = [(int(now - T0) - 300, "old"), (int(now - T0) - 5, "new1"), (None, "new1-cont"),
                        (int(now - T0) - 1, "new2")]
    path = tmp_path / "c.log"
    path.write_bytes(_log(*lines))
    status, text = await _get(path, {"sinceSeconds": "60"})
    assert status == 200 and [x.split("\t")[-1] for x in text.splitlines()] == ["new1", "new1-cont", "new2"]
    _, text = await _get(path, {"sinceSeconds": "60", "tailLines": "2"})
    assert [x.split("\t")[-1] for x in text.splitlines()] == ["new1-cont", "new2"]
    _, text = await _get(path, {"sinceSeconds": "600", "tailLines": "1", "limitBytes": "4"})
    assert text == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + lines[3][0]))[:4]
    _, text = await _get(path, {"sinceTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3))})
    assert [x.split("\t")[-1] for x in text.splitlines()] == ["new2"]
    status, text = await _get(path, {"sinceSeconds": "-1"})
    assert status == 400 and "greater than 0" in text
    plain = tmp_path / "plain.log"
    plain.write_text("no time here\n")
    os.utime(plain, (now - 120, now - 120))
    assert (await _get(plain, {"sinceSeconds": "60"}))[1] == ""
    assert (await _get(plain, {"sinceSeconds": "600"}))[1] == "no time here\n"


@pytest.mark.parametrize(("stamp", "text"), [
    (T0, "2026-12-06T06:00:00Z"),
    (T0 + 0.25, "2026-12-06T06:00:00.25Z"),
    (T0 + 0.000001, "2026-12-06T06:00:00.000001Z"),
    (T0 + 0.9999999, "2026-12-06T06:00:01Z"),
])
def test_rfc3339_nano_as_the_kubelet_writes_it(stamp: float, text: str) -> None:
    assert rfc3339_nano(stamp) == text


def test_line_stamper_inherits_and_holds_partial_lines() -> None:
    s = LineStamper()
    got = s.feed(b"2026-12-06T06:00:01Z a\ncontinued\n2026-12-06T06:00:0", untimed=T0)
    assert got == b"2026-12-06T06:00:01Z 2026-12-06T06:00:01Z a\n2026-12-06T06:00:01Z continued\n"
    assert s.feed(b"2Z b\nplain", untimed=T0) == b"2026-12-06T06:00:02Z 2026-12-06T06:00:02Z b\n"
    assert s.flush(untimed=T0) == b"2026-12-06T06:00:02Z plain"
    fresh = LineStamper()
    assert fresh.feed(b"no time\n", untimed=T0 + 5) == b"2026-12-06T06:00:05Z no time\n"


async def test_serve_log_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(b"banner\n" + _log((3, "x"), (None, "x-cont")))
    _, text = await _get(path, {"timestamps": "true"})
    stamp = "2026-12-06T06:00:03Z"
    assert text.splitlines() == [f"{stamp} banner", f"{stamp} {stamp}\tx", f"{stamp} x-cont"]
    _, text = await _get(path, {"timestamps": "true", "tailLines": "1"})
    assert text == f"{stamp} x-cont\n"


class _Previous:
    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def previous_log(self, pod: dict[str, Any], container: str) -> bytes | None:
        return self.data


async def _previous(connector: Any, query: dict[str, str], restarts: int = 0) -> tuple[int, str]:
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "c", "restartCount": restarts}]}}
    return await _serve(lambda request: serve_previous_log(request, pod, "c", connector), query)


async def test_previous_run_or_kubernetes_words_when_there_is_none() -> None:
    data = _log((0, "a"), (10, "b"))
    assert await _previous(_Previous(data), {}) == (200, data.decode())
    status, text = await _previous(_Previous(data), {"tailLines": "1", "timestamps": "true"})
    assert text == "2026-12-06T06:00:10Z " + data.decode().splitlines(keepends=True)[1]
    status, text = await _previous(_Previous(None), {})
    assert (status, text) == (400, 'previous terminated container "c" in pod "p" not found')
    status, text = await _previous(object(), {}, restarts=2)  # a runtime that cannot tell runs apart
    assert status == 400 and "cannot be told apart" in text
