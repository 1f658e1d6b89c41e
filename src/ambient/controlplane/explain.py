"""Explain an L4 authorization decision without sending traffic (`ambient x authz check`).

Role: pure glue between the cluster's objects and the data path's evaluator. Objects (as the API returns
them) go through the control plane's own translation (`controlplane.index.MeshIndex`, the same pure
functions the control plane runs), the resulting xDS resources through the node proxy's own conversion
(`state.convert`), and the connection through `authz.evaluate.evaluate`, the function the destination
proxy calls. So the answer is what the mesh would do with these objects once they have propagated.

Invariants:
- No I/O: callers fetch the objects; this module only computes.
- The source's identity is the one its certificate would carry (its pod's SPIFFE id) only when the source
  pod is enrolled; a non-enrolled pod or a bare IP is a plaintext peer (no principal, no namespace), which
  is exactly how the destination proxy sees traffic arriving on its plaintext port 15006.
- A destination that is not enrolled has no node proxy in its path: nothing enforces L4 policy, and the
  explanation says so instead of pretending a decision.
- `compare_with_proxy` adds what the destination's proxy actually holds (its `/config_dump`): a policy
  still propagating is enforced differently right now (a referenced one that is missing fails closed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ambient.authz.evaluate import ConnectionInfo, Decision, evaluate
from ambient.controlplane import translate as tr
from ambient.controlplane.index import MeshIndex
from ambient.controlplane.policy import peer_authentication_warning
from ambient.core.errors import AmbientError
from ambient.state import convert
from ambient.state.model import Authorization, Scope, TunnelProtocol, Workload, parse_ip

Obj = dict[str, Any]
# The kinds the translation reads (Gateway: waypoint bindings change a workload's resource, not its policy,
# but feeding it keeps the index identical to the control plane's).
KINDS = ("Namespace", "Pod", "Service", "AuthorizationPolicy", "PeerAuthentication", "Gateway")


class ExplainError(AmbientError):
    """The explain inputs do not name something that exists (pod, IP, port)."""


class _Policies:
    """`authz.evaluate.PolicyView` over a plain dict of converted policies."""

    def __init__(self, policies: Mapping[str, Authorization]) -> None:
        self._by_key = dict(policies)

    def policy(self, key: str) -> Authorization | None:
        return self._by_key.get(key)

    def global_policies(self) -> Sequence[Authorization]:
        return [p for p in self._by_key.values() if p.scope == Scope.GLOBAL]

    def namespace_policies(self, namespace: str) -> Sequence[Authorization]:
        return [p for p in self._by_key.values() if p.scope == Scope.NAMESPACE and p.namespace == namespace]

    def drop(self, keys: Iterable[str]) -> _Policies:
        gone = set(keys)
        return _Policies({k: v for k, v in self._by_key.items() if k not in gone})


@dataclass(frozen=True)
class Source:
    """Who connects: an enrolled pod (has an identity) or a plaintext peer (pod outside the mesh, or an IP)."""

    ip: str
    name: str  # "ns/pod" or the IP
    identity: str | None = None


@dataclass(frozen=True)
class PolicyLine:
    """One applicable policy as the explanation prints it."""

    key: str
    action: str
    scope: str
    dry_run: bool
    effect: str  # allow / deny / would allow / would deny / no match / missing
    status: str | None = None  # the control plane's narrowing / omission message, if any


@dataclass(frozen=True)
class Explanation:
    source: Source
    destination: str  # "ns/pod"
    destination_ip: str
    port: int
    enforced: bool  # False: the destination is not enrolled, no proxy enforces anything
    decision: Decision | None
    policies: tuple[PolicyLine, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    references: tuple[str, ...] = ()  # the destination workload's authorization_policies
    proxy: ProxyComparison | None = None

    @property
    def allowed(self) -> bool:
        return self.decision is None or self.decision.allowed

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "source": {"name": self.source.name, "ip": self.source.ip, "identity": self.source.identity},
            "destination": {"name": self.destination, "ip": self.destination_ip, "port": self.port},
            "enforced": self.enforced,
            "allowed": self.allowed,
            "reason": d.reason if d else "destination is not in the mesh: no L4 policy applies",
            "error": d.error if d and d.denied else None,
            "decidingPolicies": list(d.policies) if d else [],
            "missingPolicies": list(d.missing) if d else [],
            "dryRun": None
            if d is None or d.shadow_allowed is None
            else {"allowed": d.shadow_allowed, "reason": d.shadow_reason},
            "policies": [
                {
                    "policy": p.key,
                    "action": p.action,
                    "scope": p.scope,
                    "dryRun": p.dry_run,
                    "effect": p.effect,
                    "status": p.status,
                }
                for p in self.policies
            ],
            "notes": list(self.notes),
            "proxy": None
            if self.proxy is None
            else {"node": self.proxy.node, "missing": list(self.proxy.missing), "error": self.proxy.error},
        }


@dataclass(frozen=True)
class ProxyComparison:
    """What the destination's node proxy actually holds versus what the objects translate to."""

    node: str
    missing: tuple[str, ...] = ()  # applicable / referenced policies the proxy does not have (yet)
    error: str | None = None  # the proxy could not be asked


def compare_with_proxy(ex: Explanation, node: str, dump: Mapping[str, Any]) -> Explanation:
    """`ex` plus which of its policies the proxy's `/config_dump` lacks: a policy still propagating (or
    rejected by the proxy) is enforced differently right now (a missing referenced one fails closed)."""
    have = {f"{p.get('namespace')}/{p.get('name')}" for p in dump.get("policies") or []}
    wanted = [p.key for p in ex.policies if p.effect not in ("not sent", "missing")] + list(ex.references)
    missing = tuple(sorted({k for k in wanted if k not in have}))
    return replace(ex, proxy=ProxyComparison(node, missing))


def proxy_unreachable(ex: Explanation, node: str, error: str) -> Explanation:
    return replace(ex, proxy=ProxyComparison(node, error=error))


class MeshModel:
    """The translated mesh: workloads by (ns, pod), policies by key, and the policies' status messages."""

    def __init__(self, objects: Mapping[str, Iterable[Obj]], root_namespace: str = tr.ROOT_NAMESPACE) -> None:
        index = MeshIndex(root_namespace)
        # The index logs narrowing warnings for the control plane's log; here they are part of the
        # explanation (PolicyLine.status), so keep them off the user's terminal.
        index_log = logging.getLogger(MeshIndex.__module__)
        level = index_log.level
        index_log.setLevel(logging.ERROR)
        try:
            for kind in KINDS:
                index.replace(kind, list(objects.get(kind, ())))
            index.flush()
        finally:
            index_log.setLevel(level)
        self.root_namespace = root_namespace
        self.pods: dict[tuple[str, str], Obj] = {
            (str(p["metadata"].get("namespace") or "default"), str(p["metadata"]["name"])): p
            for p in objects.get("Pod", ())
        }
        self.workloads: dict[tuple[str, str], Workload] = {}
        for addr in index.addresses.values():
            if addr.WhichOneof("type") == "workload":
                w = convert.workload(addr.workload)
                self.workloads[(w.namespace, w.name)] = w
        self.policies = _Policies({k: convert.authorization(v) for k, v in index.authorizations.items()})
        self.status = {f"{ns}/{name}": msg for (ns, name), msg in index.policy_status.items() if msg}
        self.peer_auth_warnings: list[str] = []
        for pa in objects.get("PeerAuthentication", ()):
            warning = peer_authentication_warning(pa)
            if warning:
                meta = pa.get("metadata") or {}
                where = f"{meta.get('namespace')}/{meta.get('name')}"
                self.peer_auth_warnings.append(f"PeerAuthentication {where}: {warning}")

    def pod(self, ref: str) -> tuple[str, str]:
        ns, sep, name = ref.partition("/")
        if not sep:
            ns, name = "default", ref
        if (ns, name) not in self.pods:
            raise ExplainError(f"pod {ns}/{name} not found", hint="name it NAMESPACE/POD (see `ambient get pods -A`)")
        return ns, name

    def source_pod(self, ref: str) -> Source:
        ns, name = self.pod(ref)
        w = self.workloads.get((ns, name))
        if w is None or not w.addresses:
            raise ExplainError(f"pod {ns}/{name} has no IP yet", hint="wait until it is Running")
        enrolled = w.tunnel_protocol == TunnelProtocol.HBONE
        return Source(str(w.addresses[0]), f"{ns}/{name}", w.identity if enrolled else None)

    def explain(
        self, source: Source, destination: str, port: int, *, assume_missing: Iterable[str] = ()
    ) -> Explanation:
        """The decision of the destination's proxy for `source` -> `destination`:`port`.
        `assume_missing`: policy keys to treat as not yet received (what-if for propagation)."""
        ns, name = self.pod(destination)
        w = self.workloads.get((ns, name))
        if w is None or not w.addresses:
            raise ExplainError(f"pod {ns}/{name} has no IP yet", hint="wait until it is Running")
        dst_ip = str(w.addresses[0])
        notes: list[str] = list(self.peer_auth_warnings)
        if source.identity is None:
            notes.append(
                "the source is not in the mesh: it arrives in plaintext on the destination proxy's port 15006, "
                "with no principal or namespace (rules on those never match it)"
            )
        if w.tunnel_protocol != TunnelProtocol.HBONE:
            notes.append(f"destination {ns}/{name} is not enrolled in the mesh: no node proxy enforces L4 policy")
            return Explanation(source, f"{ns}/{name}", dst_ip, port, False, None, (), tuple(notes))
        view = self.policies.drop(assume_missing)
        conn = ConnectionInfo(parse_ip(source.ip), parse_ip(dst_ip), port, source.identity)
        decision = evaluate(conn, w, view)
        lines = [
            PolicyLine(r.policy, r.action.name, self._scope(r.policy), r.dry_run, r.effect, self.status.get(r.policy))
            for r in decision.results
        ]
        lines += [PolicyLine(k, "?", "WORKLOAD_SELECTOR", False, "missing") for k in decision.missing]
        # Policies of the namespace that were not sent at all (CUSTOM/AUDIT, invalid): worth seeing.
        for key, msg in sorted(self.status.items()):
            mine = key.split("/", 1)[0] in (ns, self.root_namespace)
            if mine and view.policy(key) is None and key not in decision.missing:
                lines.append(PolicyLine(key, "-", "-", False, "not sent", msg))
        return Explanation(
            source, f"{ns}/{name}", dst_ip, port, True, decision, tuple(lines), tuple(notes), w.authorization_policies
        )

    def _scope(self, key: str) -> str:
        p = self.policies.policy(key)
        return p.scope.name if p is not None else "?"


def render_text(ex: Explanation) -> str:
    """A short human story: verdict first, then the policies and notes."""
    d = ex.decision
    who = ex.source.name + (f" ({ex.source.identity})" if ex.source.identity else " (plaintext, no identity)")
    out = [f"{who} -> {ex.destination} {ex.destination_ip}:{ex.port}"]
    if d is None:
        out.append("ALLOW  (not enforced: destination is not in the mesh)")
    else:
        out.append(f"{'ALLOW' if d.allowed else 'DENY '}  {d.reason}")
        if d.denied:
            out.append(f'  the client sees a connection reset (curl exit 56); access log: error="{d.error}"')
        if d.shadow_allowed is not None and d.shadow_allowed != d.allowed:
            verdict = "allowed" if d.shadow_allowed else "denied"
            out.append(f"  dry-run: would be {verdict} if dry-run policies were enforced ({d.shadow_reason})")
    if ex.policies:
        out.append("policies:")
        width = max(len(p.key) for p in ex.policies)
        for p in ex.policies:
            flags = " (dry-run)" if p.dry_run and not p.effect.startswith("would") else ""
            out.append(f"  {p.key:<{width}}  {p.action:<5} {p.scope:<17} {p.effect}{flags}")
            if p.status:
                out.append(f"  {'':<{width}}  ! {p.status}")
    elif d is not None:
        out.append("policies: none apply")
    out += [f"note: {n}" for n in ex.notes]
    if ex.proxy is not None:
        if ex.proxy.error:
            out.append(f"proxy on {ex.proxy.node}: not compared ({ex.proxy.error})")
        elif ex.proxy.missing:
            out.append(
                f"proxy on {ex.proxy.node}: has NOT received {', '.join(ex.proxy.missing)} yet "
                "(a missing referenced policy fails closed; retry in a moment)"
            )
        else:
            out.append(f"proxy on {ex.proxy.node}: holds every policy above (in sync)")
    return "\n".join(out)
