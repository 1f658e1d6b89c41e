"""The waypoint's retry decisions (`waypoint.retry`), tabled."""

from __future__ import annotations

import pytest

from ambient.l7.routing import RetryPolicy
from ambient.waypoint.retry import Outcome, Plan, Step, after, plan, refused_codes

R2 = RetryPolicy(attempts=2, backoff=0.01, codes=frozenset({503}))


@pytest.mark.parametrize(("retry", "has_body", "length", "expected"), [
    (None, False, None, Plan(1, False)),
    (RetryPolicy(attempts=0), False, None, Plan(1, False)),
    (R2, False, None, Plan(3, False)),  # nothing to replay
    (R2, True, 10, Plan(3, True)),  # a small body is buffered to be replayed
    (R2, True, 100, Plan(3, True)),  # exactly the bound
    (R2, True, 101, Plan(1, False)),  # too large to buffer: one attempt
    (R2, True, None, Plan(1, False)),  # unknown length (chunked): one attempt
])
def test_plan(retry: RetryPolicy | None, has_body: bool, length: int | None, expected: Plan) -> None:
    assert plan(retry, has_body=has_body, content_length=length, max_body=100) == expected


@pytest.mark.parametrize(("retry", "attempt", "attempts", "codes"), [
    (R2, 0, 3, {503}),
    (R2, 1, 3, {503}),
    (R2, 2, 3, set()),  # the last attempt takes any answer
    (None, 0, 1, set()),
])
def test_refused_codes(retry: RetryPolicy | None, attempt: int, attempts: int, codes: set[int]) -> None:
    assert set(refused_codes(retry, attempt, attempts)) == codes


@pytest.mark.parametrize(("outcome", "started", "last", "step"), [
    (Outcome.ANSWERED, True, False, Step.DONE),
    (Outcome.ANSWERED, True, True, Step.DONE),
    (Outcome.ANSWERED, False, False, Step.RETRY_AFTER_BACKOFF),  # the code was refused
    (Outcome.TIMED_OUT, False, False, Step.RETRY_NOW),
    (Outcome.TIMED_OUT, False, True, Step.RAISE),
    (Outcome.TIMED_OUT, True, False, Step.RAISE),  # the client already has part of an answer
    (Outcome.FAILED, False, False, Step.RETRY_AFTER_BACKOFF),
    (Outcome.FAILED, False, True, Step.RAISE),
    (Outcome.FAILED, True, False, Step.RAISE),
])
def test_after(outcome: Outcome, started: bool, last: bool, step: Step) -> None:
    assert after(outcome, started=started, last=last) is step
