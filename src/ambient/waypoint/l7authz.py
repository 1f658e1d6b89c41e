"""Pure L7 authorization at the waypoint: Istio `AuthorizationPolicy` with `targetRefs` (kind Service or
Gateway), evaluated per HTTP request (or per connection for L4 passthrough traffic).

Role: `parse_policy(obj)` turns a Kubernetes-shaped AuthorizationPolicy into an immutable `L7Policy`;
`applicable(policies, target)` keeps those whose targetRefs name the destination Service or this waypoint's
Gateway; `evaluate(policies, request)` decides. No I/O, no clock, no logging.

Order, as Istio layers the Envoy RBAC filters (pilot/pkg/security/authz/builder): CUSTOM, then AUDIT, DENY,
ALLOW. This waypoint has no external authorizer (no `meshConfig.extensionProviders`), so every CUSTOM policy
names a provider that is not found; istiod then configures Envoy with a DENY RBAC filter built from that
policy's rules (`getBadCustomDenyRules`): a request matching the policy's rules is denied (fail closed for
the traffic the policy was meant to check), any other request goes on to the next layers. AUDIT policies
never change the decision: the ones that match are reported in `L7Decision.audit` (Envoy's RBAC_LOG sets an
access-log hint; the waypoint writes them in its access line). Then any matching DENY denies; else no ALLOW
policy -> allow; else allow only if an ALLOW matches; else deny. Dry-run policies (annotation
`istio.io/dry-run: "true"`) are evaluated and reported in `shadow` but never enforced.

Matching: a policy with no `rules` matches nothing (ALLOW + no rules = "allow nothing"); a rule matches
when its `from` (any source), its `to` (any operation) and every `when` condition match; an empty list of
from/to means "any". Inside a source/operation the fields AND and the values of one field OR; a `not*`
field requires that none of its values match. String values: exact, `prefix*`, `*suffix`, `*` (presence).
Methods are case-sensitive, hosts case-insensitive (the request's port is ignored), paths are matched on
the normalised path without query. Principals are compared without `spiffe://`; namespaces come from the
peer certificate's SPIFFE id; both only from the HBONE peer certificate, never from headers.

Fail-safe resolution of attributes the waypoint does not have: HTTP attributes for L4 passthrough
traffic (methods, paths, hosts, request headers, JWT fields) and unknown `when` keys. For HTTP requests
the waypoint establishes the JWT fields (RequestAuthentication): `requestPrincipals` match `<iss>/<sub>` of
a verified token ("" without one: no pattern, not even `*`, matches it), and `when` keys
`request.auth.principal`, `request.auth.audiences`, `request.auth.presenter` and
`request.auth.claims[name]` (nested: `[a][b]`; a list claim matches when one element does).
Such a leaf matches inside a DENY policy (deny more) and does not match inside an ALLOW policy (allow
less), the same rule the node proxy uses for HTTP-only rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ambient.l7.request_auth import claim_values
from ambient.waypoint.errors import ConfigError

SPIFFE = "spiffe://"
DRY_RUN_ANNOTATION = "istio.io/dry-run"
Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]
_UNKNOWN = None  # a leaf whose truth the waypoint cannot establish


def match_value(pattern: str, value: str) -> bool:
    """Istio string match: `*` presence, `abc*` prefix, `*abc` suffix, else exact."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _strip_spiffe(value: str) -> str:
    return value[len(SPIFFE):] if value.startswith(SPIFFE) else value


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()  # "ns/sa"
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyRule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True, slots=True)
class L7Policy:
    name: str
    namespace: str
    action: Action = "ALLOW"
    rules: tuple[PolicyRule, ...] = ()
    targets: tuple[TargetRef, ...] = ()
    dry_run: bool = False
    provider: str = ""  # CUSTOM: the extension provider's name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is addressed to, for picking applicable policies."""

    service_name: str = ""
    service_namespace: str = ""
    gateway_name: str = ""
    gateway_namespace: str = ""


@dataclass(frozen=True, slots=True)
class RequestAttrs:
    """Attributes of one request. `http=False` for L4 passthrough (no method/path/host/headers)."""

    principal: str = ""  # SPIFFE URI of the peer certificate ("" when none)
    port: int = 0  # destination service port
    method: str = ""
    path: str = ""
    host: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    source_ip: str = ""
    http: bool = True
    # RequestAuthentication outcome: None = not established (L4 traffic), "" = no authenticated token
    request_principal: str | None = None
    auth_claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        return _strip_spiffe(self.principal)

    @property
    def namespace(self) -> str:
        parts = self.peer.split("/")
        # <trust-domain>/ns/<namespace>/sa/<service-account>
        return parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else ""

    @property
    def service_account(self) -> str:
        parts = self.peer.split("/")
        return f"{parts[2]}/{parts[4]}" if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else ""


@dataclass(frozen=True, slots=True)
class L7Decision:
    allowed: bool
    reason: str
    policy: str | None = None  # "ns/name" of the deciding policy
    shadow: str | None = None  # what dry-run policies would have done, when it differs
    audit: tuple[str, ...] = ()  # "ns/name" of the AUDIT policies that matched (logged, never enforced)

    @property
    def denied(self) -> bool:
        return not self.allowed

    @property
    def details(self) -> str:
        """Envoy's `response_code_details` for a denial: `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]]`
        (Istio names Envoy RBAC policies `ns[NS]-policy[NAME]-rule[I]`; the rule index is not tracked here),
        `[none]` when no policy matched (allow policies exist, none allowed); "" when allowed."""
        if self.allowed:
            return ""
        if not self.policy:
            return "rbac_access_denied_matched_policy[none]"
        ns, _, name = self.policy.partition("/")
        return f"rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]]"


# ------------------------------------------------------------------------------------------- matching
# A leaf is True / False / _UNKNOWN; `_resolve` applies the fail-safe rule for the policy's action.


def _any(patterns: Sequence[str], value: str | None, *, fold: bool = False) -> bool | None:
    if value is None:
        return _UNKNOWN
    if fold:
        value = value.lower()
        return any(match_value(p.lower(), value) for p in patterns)
    return any(match_value(p, value) for p in patterns)


def _field(pos: Sequence[str], neg: Sequence[str], value: str | None, deny: bool, *, fold: bool = False) -> bool:
    """Positive values OR; `not` values: none may match. Unknown values resolve to `deny`."""
    if pos:
        hit = _any(pos, value, fold=fold)
        if not (deny if hit is _UNKNOWN else hit):
            return False
    if neg:
        hit = _any(neg, value, fold=fold)
        if (not deny) if hit is _UNKNOWN else hit:
            return False
    return True


def _in_blocks(blocks: Sequence[str], ip: str) -> bool | None:
    if not ip:
        return _UNKNOWN
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return _UNKNOWN
    for block in blocks:
        try:
            if addr in ipaddress.ip_network(block, strict=False):
                return True
        except ValueError:
            continue
    return False


def _source(src: Source, req: RequestAttrs, deny: bool) -> bool:
    principal = req.peer or None
    namespace = req.namespace or None
    sa = req.service_account or None
    pos = [_strip_spiffe(p) for p in src.principals]
    if not _field(pos, [_strip_spiffe(p) for p in src.not_principals], principal, deny):
        return False
    if not _field(src.namespaces, src.not_namespaces, namespace, deny):
        return False
    if not _field(src.service_accounts, src.not_service_accounts, sa, deny):
        return False
    if src.ip_blocks:
        hit = _in_blocks(src.ip_blocks, req.source_ip)
        if not (deny if hit is _UNKNOWN else hit):
            return False
    if src.not_ip_blocks:
        hit = _in_blocks(src.not_ip_blocks, req.source_ip)
        if (not deny) if hit is _UNKNOWN else hit:
            return False
    # "" (no authenticated token) matches no pattern, "*" included, as Envoy's metadata matcher
    return _field(src.request_principals, src.not_request_principals, req.request_principal, deny)


def _operation(op: Operation, req: RequestAttrs, deny: bool) -> bool:
    http = req.http
    host = req.host.rsplit(":", 1)[0] if req.host.count(":") == 1 else req.host
    return (
        _field(op.ports, op.not_ports, str(req.port), deny)
        and _field(op.methods, op.not_methods, req.method if http else None, deny)
        and _field(op.paths, op.not_paths, req.path if http else None, deny)
        and _field(op.hosts, op.not_hosts, host if http else None, deny, fold=True)
    )


def _condition_value(key: str, req: RequestAttrs) -> str | list[str] | None:
    if key.startswith("request.auth."):
        if req.request_principal is None:
            return None
        if key == "request.auth.principal":
            return req.request_principal
        if key == "request.auth.audiences":
            aud = req.auth_claims.get("aud")
            return [aud] if isinstance(aud, str) else [str(a) for a in aud] if isinstance(aud, list) else []
        if key == "request.auth.presenter":
            return str(req.auth_claims.get("azp") or "")
        if key.startswith("request.auth.claims[") and key.endswith("]"):
            path = key[len("request.auth.claims["):-1].split("][")
            return claim_values(req.auth_claims, path) or []
        return None
    if key.startswith("request.headers[") and key.endswith("]"):
        if not req.http:
            return None
        return req.headers.get(key[len("request.headers["):-1].lower(), "")
    if key == "source.principal":
        return req.peer
    if key == "source.namespace":
        return req.namespace
    if key == "source.ip":
        return req.source_ip or None
    if key == "destination.port":
        return str(req.port)
    return None  # unknown key (or a JWT claim): never established


def _condition(cond: Condition, req: RequestAttrs, deny: bool) -> bool:
    value = _condition_value(cond.key, req)
    if isinstance(value, list):  # a list claim: values match when any element does, notValues when none does
        if cond.values and not any(match_value(p, v) for p in cond.values for v in value):
            return False
        return not (cond.not_values and any(match_value(p, v) for p in cond.not_values for v in value))
    if value is not None and cond.key == "source.ip":
        pos = _in_blocks(cond.values, value) if cond.values else True
        neg = _in_blocks(cond.not_values, value) if cond.not_values else False
        return bool(pos) and not bool(neg)
    return _field(cond.values, cond.not_values, value, deny)


def rule_matches(rule: PolicyRule, req: RequestAttrs, deny: bool) -> bool:
    if rule.sources and not any(_source(s, req, deny) for s in rule.sources):
        return False
    if rule.operations and not any(_operation(o, req, deny) for o in rule.operations):
        return False
    return all(_condition(c, req, deny) for c in rule.conditions)


def policy_matches(policy: L7Policy, req: RequestAttrs) -> bool:
    deny = policy.action != "ALLOW"
    return any(rule_matches(r, req, deny) for r in policy.rules)


# -------------------------------------------------------------------------------------------- decision


def applicable(policies: Iterable[L7Policy], target: Target) -> list[L7Policy]:
    """Policies whose targetRefs name the destination Service (or ServiceEntry) or this waypoint's Gateway."""
    out = []
    for p in policies:
        for t in p.targets:
            # A ServiceEntry's hosts are Services named after it (an egress waypoint's policies name it).
            if t.kind in ("Service", "ServiceEntry") and (t.name, t.namespace) == (target.service_name,
                                                                                    target.service_namespace):
                out.append(p)
                break
            if t.kind == "Gateway" and (t.name, t.namespace) == (target.gateway_name, target.gateway_namespace):
                out.append(p)
                break
    return out


def custom_denial(policy: L7Policy) -> str:
    """Why a request matching a CUSTOM policy is denied (no external authorizer is configured)."""
    provider = f"extension provider {policy.provider!r}" if policy.provider else "an extension provider"
    return (f"denied by CUSTOM policy {policy.key}: {provider} is not defined in meshConfig.extensionProviders, "
            "so requests matching its rules are denied")


def _decide(policies: Sequence[L7Policy], req: RequestAttrs) -> L7Decision:
    for p in policies:
        if p.action == "CUSTOM" and policy_matches(p, req):
            return L7Decision(False, custom_denial(p), p.key)
    for p in policies:
        if p.action == "DENY" and policy_matches(p, req):
            return L7Decision(False, f"denied by policy {p.key}", p.key)
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return L7Decision(True, "no allow policies")
    for p in allows:
        if policy_matches(p, req):
            return L7Decision(True, f"allowed by policy {p.key}", p.key)
    return L7Decision(False, "allow policies exist, but none allowed")


def evaluate(policies: Iterable[L7Policy], req: RequestAttrs) -> L7Decision:
    """Decide one request against the already-`applicable` policies."""
    policies = list(policies)
    active = [p for p in policies if p.action != "AUDIT"]
    enforced = [p for p in active if not p.dry_run]
    decision = _decide(enforced, req)
    shadow = None
    if len(enforced) != len(active):
        dry = _decide(active, req)
        if dry.allowed != decision.allowed:
            shadow = f"dry-run: {dry.reason}"
    audit = tuple(p.key for p in policies if p.action == "AUDIT" and policy_matches(p, req))
    if shadow is None and not audit:
        return decision
    return L7Decision(decision.allowed, decision.reason, decision.policy, shadow, audit)


# ---------------------------------------------------------------------------------------------- parsing


def _strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: expected a list of strings")
    return tuple(str(v) for v in value)


def parse_policy(obj: Mapping[str, Any]) -> L7Policy:
    """A Kubernetes-shaped AuthorizationPolicy -> `L7Policy` (targetRefs kept; selector policies have none)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    where = f"AuthorizationPolicy {namespace}/{name}"
    spec = obj.get("spec") or {}
    action = str(spec.get("action") or "ALLOW").upper()
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        raise ConfigError(f"{where}: unknown action {action!r}", hint="use ALLOW, DENY, AUDIT or CUSTOM")
    refs = list(spec.get("targetRefs") or ())
    if spec.get("targetRef"):
        refs.append(spec["targetRef"])
    targets = tuple(
        TargetRef(str(r.get("kind", "")), str(r.get("name", "")), str(r.get("namespace") or namespace)) for r in refs
    )
    rules = []
    for ri, rule in enumerate(spec.get("rules") or ()):
        rw = f"{where} rules[{ri}]"
        sources = []
        for fi, frm in enumerate(rule.get("from") or ()):
            s = frm.get("source") or {}
            sw = f"{rw}.from[{fi}].source"
            sources.append(Source(
                _strings(s, "principals", sw), _strings(s, "notPrincipals", sw),
                _strings(s, "namespaces", sw), _strings(s, "notNamespaces", sw),
                _strings(s, "serviceAccounts", sw), _strings(s, "notServiceAccounts", sw),
                _strings(s, "ipBlocks", sw) + _strings(s, "remoteIpBlocks", sw),
                _strings(s, "notIpBlocks", sw) + _strings(s, "notRemoteIpBlocks", sw),
                _strings(s, "requestPrincipals", sw), _strings(s, "notRequestPrincipals", sw),
            ))
        operations = []
        for ti, to in enumerate(rule.get("to") or ()):
            o = to.get("operation") or {}
            ow = f"{rw}.to[{ti}].operation"
            operations.append(Operation(
                _strings(o, "hosts", ow), _strings(o, "notHosts", ow),
                _strings(o, "ports", ow), _strings(o, "notPorts", ow),
                _strings(o, "methods", ow), _strings(o, "notMethods", ow),
                _strings(o, "paths", ow), _strings(o, "notPaths", ow),
            ))
        conditions = tuple(
            Condition(str(c.get("key", "")), _strings(c, "values", f"{rw}.when[{ci}]"),
                      _strings(c, "notValues", f"{rw}.when[{ci}]"))
            for ci, c in enumerate(rule.get("when") or ())
        )
        rules.append(PolicyRule(tuple(sources), tuple(operations), conditions))
    annotations = meta.get("annotations") or {}
    dry_run = str(annotations.get(DRY_RUN_ANNOTATION, "")).lower() == "true"
    provider_spec = spec.get("provider") if action == "CUSTOM" else None
    provider = str(provider_spec.get("name") or "") if isinstance(provider_spec, Mapping) else ""
    return L7Policy(name, namespace, action, tuple(rules), targets, dry_run, provider)  # type: ignore[arg-type]
