"""Pure L4 authorization at the destination node proxy (protocols.md s.3 "Policy evaluation").

Role: `evaluate(conn, workload, policies) -> Decision`, no I/O, no clock, no logging: the inbound path
calls it once per connection (and again on policy changes, for live revocation); the explain command calls
it without traffic.

Semantics (in this order):
1. Applicable policies: every GLOBAL-scope policy, the NAMESPACE-scope policies of the destination
   workload's namespace, and the policies the workload references in `authorization_policies`
   ("ns/name"), de-duplicated.
2. Fail closed: a referenced policy that is not in the store denies the connection, with a reason naming
   the missing policy (the reference skips it, which can miss a DENY while config propagates).
3. Dry-run policies are evaluated but never enforced; their outcome is reported in `Decision.results` and
   in `shadow_allowed` / `shadow_reason` (the decision had they been enforced). A dry-run ALLOW does not
   switch on default-deny.
4. Any matching DENY denies ("denied by policy ns/name"). Else, no ALLOW policy: allow ("no allow
   policies"). Else allow only if an ALLOW matches ("allowed by policy ns/name"), otherwise deny
   ("allow policies exist, but none allowed").

Matching: a policy's rules OR together (no rules: matches nothing); a rule's clauses AND together (a rule
with no clauses matches everything); a clause's matches OR together (a clause with no matches matches
nothing); inside a Match the non-empty fields AND together and the values of one field OR together; a
`not_*` field requires that none of its values match. StringMatch is exact / prefix / suffix / presence
(any non-empty value). Principals are compared without the "spiffe://" prefix (on either side). Source and
destination IPs are CIDRs (IPv4-mapped IPv6 peers are compared as IPv4; a v4 CIDR never matches a v6
address). An empty ServiceAccountMatch namespace matches any namespace.

Connections without a peer identity (plaintext on 15006, or a certificate whose SAN is not a parseable
SPIFFE id for namespace / service-account fields). Decision, fail-safe in both directions:
- positive identity fields (principals, namespaces, service_accounts) never match them;
- negated identity fields (not_principals, not_namespaces, not_service_accounts) cannot be *proven*
  (nothing says who the peer is), so they resolve to the safe side for the policy's action: they MATCH
  inside a DENY policy (deny more: Istio's "deny plaintext" idiom `notPrincipals: ["*"]` works) and do NOT
  match inside an ALLOW policy (allow less: `ALLOW notPrincipals: [X]` does not admit anonymous peers,
  which is stricter than Envoy/Istio, where it would);
- non-identity fields (IPs, ports) and their negations evaluate normally.
Because results only combine through AND/OR, resolving at the leaves gives the policy-level safe answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from ambient.state.model import (
    SPIFFE_PREFIX,
    Action,
    Address,
    Authorization,
    IPAddress,
    Match,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
    Workload,
    canonical_ip,
)

REJECTION_PREFIX = "connection closed due to policy rejection: "
REASON_NO_ALLOW_MATCHED = "allow policies exist, but none allowed"
REASON_NO_ALLOW_POLICIES = "no allow policies"


class PolicyView(Protocol):
    """The narrow read access the evaluator needs (implemented by `state.store.StateView`)."""

    def policy(self, key: str) -> Authorization | None: ...

    def global_policies(self) -> Sequence[Authorization]: ...

    def namespace_policies(self, namespace: str) -> Sequence[Authorization]: ...


@dataclass(frozen=True)
class PeerIdentity:
    """The parts of a SPIFFE id that policies look at."""

    principal: str  # without "spiffe://": "<td>/ns/<ns>/sa/<sa>"
    namespace: str | None  # None: not a parseable SPIFFE workload id
    service_account: str | None

    @classmethod
    def parse(cls, identity: str) -> PeerIdentity:
        principal = identity.removeprefix(SPIFFE_PREFIX)
        parts = principal.split("/")
        # <trust-domain>/ns/<ns>/sa/<sa>, all segments non-empty
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and all(parts):
            return cls(principal, parts[2], parts[4])
        return cls(principal, None, None)


@dataclass(frozen=True)
class ConnectionInfo:
    """What the destination proxy knows about a connection. `src_identity` only ever comes from the
    verified peer certificate (a SPIFFE URI), None for plaintext."""

    src_ip: IPAddress
    dst_ip: IPAddress
    dst_port: int
    src_identity: str | None = None

    @cached_property
    def peer(self) -> PeerIdentity | None:
        return PeerIdentity.parse(self.src_identity) if self.src_identity else None


@dataclass(frozen=True)
class PolicyResult:
    """How one applicable policy evaluated against the connection."""

    policy: str
    action: Action
    dry_run: bool
    matched: bool

    @property
    def effect(self) -> str:
        """'would deny' / 'would allow' for dry-run policies, 'deny' / 'allow' otherwise, or 'no match'."""
        if not self.matched:
            return "no match"
        verb = "deny" if self.action == Action.DENY else "allow"
        return f"would {verb}" if self.dry_run else verb


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    policies: tuple[str, ...] = ()  # the policies that decided (matching DENYs / ALLOWs, or missing ones)
    results: tuple[PolicyResult, ...] = ()  # every applicable policy present in the store, in order
    missing: tuple[str, ...] = ()  # referenced by the workload but not received
    shadow_allowed: bool | None = None  # the decision had dry-run policies been enforced; None: no dry-run
    shadow_reason: str | None = None

    @property
    def denied(self) -> bool:
        return not self.allowed

    @property
    def dry_run(self) -> tuple[PolicyResult, ...]:
        return tuple(r for r in self.results if r.dry_run)

    @property
    def error(self) -> str:
        """The access-log `error=` text of a denial."""
        return REJECTION_PREFIX + self.reason


def applicable_policies(workload: Workload, policies: PolicyView) -> tuple[list[Authorization], list[str]]:
    """(present applicable policies in a stable order, keys referenced by the workload but missing)."""
    seen: dict[str, Authorization] = {}
    for pol in policies.global_policies():
        seen.setdefault(pol.key, pol)
    for pol in policies.namespace_policies(workload.namespace):
        seen.setdefault(pol.key, pol)
    missing: list[str] = []
    for key in workload.authorization_policies:
        if key in seen:
            continue
        referenced = policies.policy(key)
        if referenced is None:
            if key not in missing:
                missing.append(key)
        else:
            seen[key] = referenced
    return list(seen.values()), missing


def evaluate(conn: ConnectionInfo, workload: Workload, policies: PolicyView) -> Decision:
    """Decide whether `conn` may reach `workload`. Pure; see the module docstring for the rules."""
    present, missing = applicable_policies(workload, policies)
    results = tuple(PolicyResult(p.key, p.action, p.dry_run, policy_matches(p, conn)) for p in present)
    if missing:
        names = ", ".join(missing)
        return Decision(
            allowed=False,
            reason=(
                f"policy {names} referenced by workload {workload.namespace}/{workload.name} "
                "has not been received yet (fail closed)"
            ),
            policies=tuple(missing),
            results=results,
            missing=tuple(missing),
        )
    enforced = _combine([r for r in results if not r.dry_run])
    if not any(r.dry_run for r in results):
        return Decision(enforced[0], enforced[1], enforced[2], results)
    shadow = _combine(list(results))
    return Decision(
        enforced[0],
        enforced[1],
        enforced[2],
        results,
        shadow_allowed=shadow[0],
        shadow_reason=shadow[1],
    )


def _combine(results: list[PolicyResult]) -> tuple[bool, str, tuple[str, ...]]:
    deny = tuple(r.policy for r in results if r.action == Action.DENY and r.matched)
    if deny:
        label = "policy" if len(deny) == 1 else "policies"
        return False, f"denied by {label} {', '.join(deny)}", deny
    allows = [r for r in results if r.action == Action.ALLOW]
    if not allows:
        return True, REASON_NO_ALLOW_POLICIES, ()
    allowed_by = tuple(r.policy for r in allows if r.matched)
    if allowed_by:
        return True, f"allowed by policy {allowed_by[0]}", allowed_by
    return False, REASON_NO_ALLOW_MATCHED, ()


# ------------------------------------------------------------------------------------------ matching


def policy_matches(policy: Authorization, conn: ConnectionInfo) -> bool:
    """Rules OR (none: False), clauses AND (none: True), matches OR (none: False)."""
    deny = policy.action == Action.DENY
    return any(
        all(any(match_matches(m, conn, deny=deny) for m in clause.matches) for clause in rule.clauses)
        for rule in policy.rules
    )


def match_matches(m: Match, conn: ConnectionInfo, *, deny: bool) -> bool:
    """One Match: every non-empty field must hold. `deny` picks the safe side for unprovable negations."""
    peer = conn.peer
    src = canonical_ip(conn.src_ip)
    dst = canonical_ip(conn.dst_ip)

    # identity fields
    principal = peer.principal if peer else None
    if not _field(m.principals, m.not_principals, principal, _principal_match, deny):
        return False
    namespace = peer.namespace if peer else None
    if not _field(m.namespaces, m.not_namespaces, namespace, _string_match, deny):
        return False
    if m.service_accounts or m.not_service_accounts:
        if peer is None or peer.namespace is None or peer.service_account is None:
            if m.service_accounts or not deny:
                return False
        else:
            ns, name = peer.namespace, peer.service_account
            if m.service_accounts and not any(_sa_match(x, ns, name) for x in m.service_accounts):
                return False
            if any(_sa_match(x, ns, name) for x in m.not_service_accounts):
                return False

    # network fields: always known
    if m.source_ips and not _in_any(m.source_ips, src):
        return False
    if m.not_source_ips and _in_any(m.not_source_ips, src):
        return False
    if m.destination_ips and not _in_any(m.destination_ips, dst):
        return False
    if m.not_destination_ips and _in_any(m.not_destination_ips, dst):
        return False
    if m.destination_ports and conn.dst_port not in m.destination_ports:
        return False
    return not (m.not_destination_ports and conn.dst_port in m.not_destination_ports)


def _field(
    positive: tuple[StringMatch, ...],
    negative: tuple[StringMatch, ...],
    value: str | None,
    pred: _Pred,
    deny: bool,
) -> bool:
    if not positive and not negative:
        return True
    if value is None:
        # Unknown peer: positive never matches; a negation matches only where that is the safe side.
        return not positive and deny
    if positive and not any(pred(sm, value) for sm in positive):
        return False
    return not any(pred(sm, value) for sm in negative)


class _Pred(Protocol):
    def __call__(self, sm: StringMatch, value: str, /) -> bool: ...


def _string_match(sm: StringMatch, value: str) -> bool:
    return sm.matches(value)


def _principal_match(sm: StringMatch, value: str) -> bool:
    # Policies may spell principals with or without "spiffe://"; peers' are compared without it.
    if sm.kind in (StringMatchKind.EXACT, StringMatchKind.PREFIX) and sm.value.startswith(SPIFFE_PREFIX):
        sm = StringMatch(sm.kind, sm.value.removeprefix(SPIFFE_PREFIX))
    return sm.matches(value)


def _sa_match(x: ServiceAccountMatch, namespace: str, name: str) -> bool:
    return (not x.namespace or x.namespace == namespace) and x.service_account == name


def _in_any(cidrs: tuple[Address, ...], ip: IPAddress) -> bool:
    return any(c.contains(ip) for c in cidrs)


__all__ = [
    "REASON_NO_ALLOW_MATCHED",
    "REASON_NO_ALLOW_POLICIES",
    "REJECTION_PREFIX",
    "ConnectionInfo",
    "Decision",
    "PeerIdentity",
    "PolicyResult",
    "PolicyView",
    "applicable_policies",
    "evaluate",
    "match_matches",
    "policy_matches",
]
