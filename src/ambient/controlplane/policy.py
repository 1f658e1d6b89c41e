"""Pure translation of AuthorizationPolicy and PeerAuthentication into `istio.security.Authorization`.

Role: the policy half of `controlplane.translate` (which re-exports everything here). No I/O, no state.

Invariants (protocols.md s.3):
- Scope: root namespace without selector -> GLOBAL, no selector -> NAMESPACE, selector -> WORKLOAD_SELECTOR.
- CUSTOM/AUDIT policies and policies attached by `targetRefs` (they are for waypoints) are never sent. A
  CUSTOM policy's status says its provider is not found and that waypoints deny what its rules match.
  HTTP-only fields drop the whole rule inside an ALLOW (the rule can never match: narrower, safe) and are
  ignored inside a DENY (it denies more: safe); both are reported as "more restrictive than requested".
- Principals are sent without the `spiffe://` prefix; "*" is presence, "x*" prefix, "*x" suffix.
- PeerAuthentication STRICT follows Istio: one static DENY policy `<root>/istio_converted_static_strict`
  (deny any connection without a peer identity) referenced by each workload whose effective mode is STRICT;
  a selector policy with port-level modes becomes `<ns>/converted_peer_authentication_<name>` instead.
- PeerAuthentication DISABLE is accepted and acts as PERMISSIVE; `peer_authentication_warning` gives the
  message to log / show for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import empty_pb2

from ambient.protocol.gen.istio.security import authorization_pb2 as sec

Obj = dict[str, Any]

ROOT_NAMESPACE = "istio-system"
DRY_RUN_ANNOTATION = "istio.io/dry-run"
STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PA_PREFIX = "converted_peer_authentication_"
# `when` keys a node proxy can enforce; every other key (request.*, ...) is HTTP-only.
_L4_WHEN_KEYS = {
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
}


def _meta(obj: Obj | None) -> Obj:
    return (obj or {}).get("metadata") or {}


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """matchLabels semantics: every selector pair present in labels. An empty selector matches all."""
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------- authorization


@dataclass(frozen=True)
class PolicyTranslation:
    """A translated AuthorizationPolicy: the resource to send (None: not sent) and a status message
    explaining any narrowing or omission (None: enforced as written)."""

    authorization: sec.Authorization | None
    message: str | None = None


def policy_scope(namespace: str, selector: Mapping[str, str] | None, root_namespace: str) -> int:
    if selector:
        return sec.WORKLOAD_SELECTOR
    return sec.GLOBAL if namespace == root_namespace else sec.NAMESPACE


def policy_selector(policy: Obj) -> dict[str, str]:
    return dict(((policy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})


def string_match(value: str, *, strip_spiffe: bool = False) -> sec.StringMatch:
    """Istio's string forms: "*" presence, "x*" prefix, "*x" suffix, else exact."""
    if strip_spiffe and value.startswith("spiffe://"):
        value = value[len("spiffe://") :]
    if value == "*":
        return sec.StringMatch(presence=empty_pb2.Empty())
    if value.endswith("*"):
        return sec.StringMatch(prefix=value[:-1])
    if value.startswith("*"):
        return sec.StringMatch(suffix=value[1:])
    return sec.StringMatch(exact=value)


def cidr(value: str) -> sec.Address:
    net = ipaddress.ip_network(value.strip(), strict=False)
    return sec.Address(address=net.network_address.packed, length=net.prefixlen)


def _ports(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


_SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _service_account(value: str, namespace: str) -> sec.ServiceAccountMatch:
    """ "ns/sa", or a bare "sa" meaning the policy's own namespace."""
    ns, _, sa = value.rpartition("/")
    return sec.ServiceAccountMatch(namespace=ns or namespace, serviceAccount=sa)


def _source_match(src: Obj, namespace: str) -> sec.Match:
    return sec.Match(
        service_accounts=[_service_account(v, namespace) for v in src.get("serviceAccounts") or []],
        not_service_accounts=[_service_account(v, namespace) for v in src.get("notServiceAccounts") or []],
        principals=[string_match(v, strip_spiffe=True) for v in src.get("principals") or []],
        not_principals=[string_match(v, strip_spiffe=True) for v in src.get("notPrincipals") or []],
        namespaces=[string_match(v) for v in src.get("namespaces") or []],
        not_namespaces=[string_match(v) for v in src.get("notNamespaces") or []],
        source_ips=[cidr(v) for v in src.get("ipBlocks") or []],
        not_source_ips=[cidr(v) for v in src.get("notIpBlocks") or []],
    )


def _when_match(key: str, values: list[str], negate: bool) -> sec.Match:
    m = sec.Match()
    if key == "source.ip":
        (m.not_source_ips if negate else m.source_ips).extend(cidr(v) for v in values)
    elif key == "source.namespace":
        (m.not_namespaces if negate else m.namespaces).extend(string_match(v) for v in values)
    elif key == "source.principal":
        (m.not_principals if negate else m.principals).extend(string_match(v, strip_spiffe=True) for v in values)
    elif key == "destination.ip":
        (m.not_destination_ips if negate else m.destination_ips).extend(cidr(v) for v in values)
    elif key == "destination.port":
        (m.not_destination_ports if negate else m.destination_ports).extend(_ports(values))
    return m


def _translate_rule(rule: Obj, allow: bool, dropped: list[str], namespace: str) -> sec.Rule | None:
    """One AuthorizationPolicy rule -> one Rule: a clause for `from`, one for `to`, one per `when`.
    Returns None when an ALLOW rule uses HTTP-only fields (the rule must never match)."""
    out = sec.Rule()
    l7: list[str] = []
    froms = rule.get("from") or []
    if froms:
        clause = sec.Clause()
        for f in froms:
            src = f.get("source") or {}
            l7 += [f"from.source.{k}" for k in _SOURCE_L7 if src.get(k)]
            clause.matches.append(_source_match(src, namespace))
        out.clauses.append(clause)
    tos = rule.get("to") or []
    if tos:
        clause = sec.Clause()
        for t in tos:
            op = t.get("operation") or {}
            l7 += [f"to.operation.{k}" for k in _OPERATION_L7 if op.get(k)]
            clause.matches.append(
                sec.Match(
                    destination_ports=_ports(op.get("ports") or []),
                    not_destination_ports=_ports(op.get("notPorts") or []),
                )
            )
        out.clauses.append(clause)
    for cond in rule.get("when") or []:
        key = str(cond.get("key") or "")
        if key not in _L4_WHEN_KEYS:
            l7.append(f"when.{key}")
            continue
        clause = sec.Clause()
        if cond.get("values"):
            clause.matches.append(_when_match(key, list(cond["values"]), negate=False))
        if cond.get("notValues"):
            clause.matches.append(_when_match(key, list(cond["notValues"]), negate=True))
        out.clauses.append(clause)
    if l7:
        dropped.extend(l7)
        if allow:
            return None
    return out


def custom_policy_message(spec: Obj) -> str:
    """The status of a CUSTOM policy. This mesh configures no `meshConfig.extensionProviders`, so its
    provider is never found; as istiod does then (authz builder: "will generate deny configs"), the
    waypoints deny the requests that match the policy's rules, and only those."""
    provider = spec.get("provider")
    name = str(provider.get("name") or "") if isinstance(provider, dict) else ""
    what = f"extension provider {name!r} is not defined" if name else "no extension provider is named"
    return (f"action CUSTOM: {what} (meshConfig.extensionProviders is empty): waypoints deny the requests "
            "matching its rules (fail closed); not sent to the node proxy")


def authorization_from_policy(policy: Obj, root_namespace: str = ROOT_NAMESPACE) -> PolicyTranslation:
    """AuthorizationPolicy (security.istio.io/v1) -> Authorization, as protocols.md s.3 describes."""
    meta = _meta(policy)
    spec = policy.get("spec") or {}
    name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    action = str(spec.get("action") or "ALLOW").upper()
    if action == "CUSTOM":
        return PolicyTranslation(None, custom_policy_message(spec))
    if action == "AUDIT":
        return PolicyTranslation(None, "not enforced: action AUDIT never changes a decision (waypoints log the "
                                 "requests it matches; not sent to the node proxy)")
    if action not in ("ALLOW", "DENY"):
        return PolicyTranslation(None, f"not enforced: unknown action {action!r}")
    if spec.get("targetRefs") or spec.get("targetRef"):
        return PolicyTranslation(None, None)  # bound to a waypoint/gateway, which enforces it (L7)
    selector = policy_selector(policy)
    allow = action == "ALLOW"
    dropped: list[str] = []
    try:
        rules = [
            r for r in (_translate_rule(rule, allow, dropped, ns) for rule in spec.get("rules") or []) if r is not None
        ]
    except ValueError as exc:  # a bad CIDR or port that validation let through
        return PolicyTranslation(None, f"not enforced: invalid value: {exc}")
    annotations = meta.get("annotations") or {}
    auth = sec.Authorization(
        name=name,
        namespace=ns,
        scope=policy_scope(ns, selector, root_namespace),  # type: ignore[arg-type]
        action=sec.ALLOW if allow else sec.DENY,
        rules=rules,
        dry_run=str(annotations.get(DRY_RUN_ANNOTATION, "")).lower() == "true",
    )
    message = None
    if dropped:
        fields = ", ".join(sorted(set(dropped)))
        how = (
            "rules using HTTP attributes never match at L4 (they are dropped)"
            if allow
            else "HTTP attributes are ignored, so the DENY applies to all matching connections"
        )
        message = f"more restrictive than requested: {how}: {fields}; use a waypoint for L7 policy"
    return PolicyTranslation(auth, message)


# -------------------------------------------------------------------------------- peer authentication


def _pa_mode(value: Any) -> str:
    mode = str(((value or {}).get("mode")) or "UNSET").upper()
    # DISABLE cannot be honoured between mesh workloads (HBONE is always mTLS): it acts as PERMISSIVE.
    return "PERMISSIVE" if mode == "DISABLE" else mode


def peer_authentication_warning(pa: Obj) -> str | None:
    """Why a PeerAuthentication is not honoured as written (None: it is). DISABLE cannot turn mTLS off
    between mesh workloads (HBONE is always mutual TLS), so it is accepted and acts as PERMISSIVE."""
    spec = pa.get("spec") or {}
    modes = [str(((spec.get("mtls") or {}).get("mode")) or "").upper()]
    modes += [str(((v or {}).get("mode")) or "").upper() for v in (spec.get("portLevelMtls") or {}).values()]
    if "DISABLE" in modes:
        return "mode DISABLE is ignored in ambient (HBONE between mesh workloads is always mTLS): acts as PERMISSIVE"
    return None


def _oldest(objs: Iterable[Obj]) -> Obj | None:
    ordered = sorted(objs, key=lambda o: (str(_meta(o).get("creationTimestamp") or ""), str(_meta(o).get("name"))))
    return ordered[0] if ordered else None


def parent_strict(namespace: str, pas: Sequence[Obj], root_namespace: str) -> bool:
    """Effective mode from the namespace-wide PeerAuthentication, else the mesh-wide one."""
    for scope_ns in (namespace, root_namespace):
        pa = _oldest(p for p in pas if _meta(p).get("namespace") == scope_ns and not policy_selector(p))
        if pa is not None:
            mode = _pa_mode((pa.get("spec") or {}).get("mtls"))
            if mode != "UNSET":
                return mode == "STRICT"
    return False


def _selected_pa(labels: Mapping[str, str], namespace: str, pas: Sequence[Obj]) -> Obj | None:
    """The workload's selector PeerAuthentication (the oldest when several match); root-namespace
    selector policies are ignored, as in the reference."""
    return _oldest(
        p
        for p in pas
        if _meta(p).get("namespace") == namespace
        and policy_selector(p)
        and selector_matches(policy_selector(p), labels)
    )


def _port_modes(pa: Obj) -> dict[int, str]:
    return {int(k): _pa_mode(v) for k, v in ((pa.get("spec") or {}).get("portLevelMtls") or {}).items()}


def peer_authentication_refs(
    labels: Mapping[str, str], namespace: str, pas: Sequence[Obj], root_namespace: str = ROOT_NAMESPACE
) -> list[str]:
    """The converted PeerAuthentication policies a workload must reference (0 or 1 name)."""
    parent = parent_strict(namespace, pas, root_namespace)
    pa = _selected_pa(labels, namespace, pas)
    if pa is None:
        return [f"{root_namespace}/{STATIC_STRICT_NAME}"] if parent else []
    base = _pa_mode((pa.get("spec") or {}).get("mtls"))
    strict = parent if base == "UNSET" else base == "STRICT"
    ports = _port_modes(pa)
    if ports and converted_peer_authentication(pa, parent, root_namespace) is not None:
        return [f"{namespace}/{CONVERTED_PA_PREFIX}{_meta(pa).get('name')}"]
    return [f"{root_namespace}/{STATIC_STRICT_NAME}"] if strict else []


def _deny_plaintext(
    *, destination_ports: list[int] | None = None, not_destination_ports: list[int] | None = None
) -> sec.Rule:
    match = sec.Match(
        not_principals=[sec.StringMatch(presence=empty_pb2.Empty())],
        destination_ports=destination_ports or [],
        not_destination_ports=not_destination_ports or [],
    )
    return sec.Rule(clauses=[sec.Clause(matches=[match])])


def static_strict_policy(root_namespace: str = ROOT_NAMESPACE) -> sec.Authorization:
    """DENY every connection without a peer identity; referenced by workloads whose mode is STRICT."""
    return sec.Authorization(
        name=STATIC_STRICT_NAME,
        namespace=root_namespace,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=[_deny_plaintext()],
    )


def converted_peer_authentication(
    pa: Obj, inherited_strict: bool, root_namespace: str = ROOT_NAMESPACE
) -> sec.Authorization | None:
    """A selector PeerAuthentication with port-level modes as a DENY policy (None: nothing to convert).

    Base STRICT (own or inherited) with PERMISSIVE ports: deny plaintext except on those ports.
    Base PERMISSIVE with STRICT ports: deny plaintext on those ports only."""
    meta = _meta(pa)
    ns = str(meta.get("namespace") or "default")
    if ns == root_namespace or not policy_selector(pa):
        return None
    ports = _port_modes(pa)
    if not ports:
        return None
    base = _pa_mode((pa.get("spec") or {}).get("mtls"))
    strict = inherited_strict if base == "UNSET" else base == "STRICT"
    if strict:
        open_ports = sorted(p for p, m in ports.items() if m == "PERMISSIVE")
        if not open_ports:
            return None
        rule = _deny_plaintext(not_destination_ports=open_ports)
    else:
        strict_ports = sorted(p for p, m in ports.items() if m == "STRICT")
        if not strict_ports:
            return None
        rule = _deny_plaintext(destination_ports=strict_ports)
    return sec.Authorization(
        name=f"{CONVERTED_PA_PREFIX}{meta.get('name')}",
        namespace=ns,
        scope=sec.WORKLOAD_SELECTOR,
        action=sec.DENY,
        rules=[rule],
    )
