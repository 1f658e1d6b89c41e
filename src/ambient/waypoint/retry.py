"""The waypoint's retry decisions, pure: how many attempts a request gets and what follows each attempt.

Role: `Waypoint._attempts` (in `server`) runs the attempts and asks this module what to do; nothing here does
I/O or sleeps, so the policy is tested with tables.

Rules (Envoy's retry policy as the route's `retry` configures it):
- `plan(retry, ...)`: a request gets 1 + `retry.attempts` attempts when it can be replayed: it has no body,
  or its body has a known length within `max_body` (it is then buffered). Otherwise exactly one attempt.
- `refused_codes(retry, attempt, attempts)`: the response codes an attempt turns down (so that the next
  attempt runs); the last attempt accepts every answer.
- `after(outcome, started, last)`: once the response to the client started nothing is retried (a success
  is done, a failure is raised); a failure on the last attempt is raised; a timed-out attempt is retried at
  once (the time is already spent); a failed attempt or a refused answer is retried after the back-off.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from ambient.l7.routing import RetryPolicy


@dataclass(frozen=True, slots=True)
class Plan:
    attempts: int  # at least 1
    buffer_body: bool  # read the body into memory first, to replay it


_ONCE = Plan(1, False)  # (immutable: the common answer is not built per request)


def plan(retry: RetryPolicy | None, *, has_body: bool, content_length: int | None, max_body: int) -> Plan:
    if retry is None or retry.attempts <= 0:
        return _ONCE
    if not has_body:
        return Plan(1 + retry.attempts, False)
    if content_length is not None and content_length <= max_body:
        return Plan(1 + retry.attempts, True)
    return Plan(1, False)


def refused_codes(retry: RetryPolicy | None, attempt: int, attempts: int) -> Collection[int]:
    """Codes attempt number `attempt` (from 0) of `attempts` refuses."""
    if retry is None or attempt >= attempts - 1:
        return ()
    return retry.codes


class Outcome(enum.Enum):
    ANSWERED = "answered"  # the attempt returned (the response started, or was refused by its code)
    TIMED_OUT = "timed out"  # the backend timeout ran out
    FAILED = "failed"  # UpstreamError (connection, protocol)


class Step(enum.Enum):
    DONE = "done"
    RAISE = "raise"
    RETRY_NOW = "retry now"
    RETRY_AFTER_BACKOFF = "retry after backoff"


def after(outcome: Outcome, *, started: bool, last: bool) -> Step:
    """What follows an attempt (`started`: the response to the client has begun)."""
    if started:
        return Step.DONE if outcome is Outcome.ANSWERED else Step.RAISE
    if outcome is Outcome.ANSWERED:
        return Step.RETRY_AFTER_BACKOFF
    if last:
        return Step.RAISE
    return Step.RETRY_NOW if outcome is Outcome.TIMED_OUT else Step.RETRY_AFTER_BACKOFF
