"""Pure decisions of the node agent: what to enroll, remove or repair, from the pods and namespaces it sees.

Role: the node agent is level-triggered. Each reconcile lists the pods of its node and the namespaces,
and `plan()` compares them with the pods the agent currently captures (`Tracked`); the agent then does
the I/O for each item of the returned `Plan`. Nothing here touches a socket, a file or a netns, so every
rule of enrollment is tested with plain tables.

Invariants:
- Enrollment is decided exactly like the chained CNI plugin decides it (`plugin.decide_enrollment`), so a
  pod that CNI ADD handed to the agent is never un-enrolled by the next reconcile, and vice versa.
- A tracked pod is removed only for a reason visible in the API (pod gone, terminal phase, labels or
  namespace say "not ambient"); a pod that is merely not Running yet (no IP: CNI ADD in progress) is kept.
- A pod is enrolled by reconcile only when it has an IP (its sandbox exists): earlier, the CNI ADD path
  owns it, which is what makes the pod start captured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ambient.cni.plugin import DATAPLANE_LABEL, PluginConfig, decide_enrollment
from ambient.cni.rules import RedirectConfig
from ambient.inpod.zds_codec import WorkloadInfo

ANNOTATION_STATUS = "ambient.istio.io/redirection"
STATUS_ENABLED = "enabled"
STATUS_PENDING = "pending"
TERMINAL_PHASES = ("Succeeded", "Failed")

Obj = Mapping[str, Any]


@dataclass
class Tracked:
    """A pod the agent captures: its rules are in place; `status` says whether the proxy accepted it."""

    uid: str
    name: str
    namespace: str
    netns_path: str
    ip: str  # "" until known (CNI ADD without IPs)
    cfg: RedirectConfig
    info: WorkloadInfo
    status: str = STATUS_PENDING  # pending: rules in place, proxy not (yet) acked; enabled: both done
    annotated: str | None = None  # the status value last written to the API (None: nothing written)
    last_error: str = ""  # why the last hand-over to the proxy failed (told to the CNI plugin)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Plan:
    """What one reconcile pass must do (each list in a deterministic order)."""

    enroll: list[Obj] = field(default_factory=list)  # running pods to capture now
    remove: list[tuple[str, str]] = field(default_factory=list)  # (uid, reason)
    reconfigure: list[tuple[str, RedirectConfig]] = field(default_factory=list)  # annotations changed
    annotate: list[str] = field(default_factory=list)  # uids whose status annotation is out of date
    refresh_ip: list[tuple[str, str]] = field(default_factory=list)  # (uid, ip) learnt from the pod status

    def empty(self) -> bool:
        return not (self.enroll or self.remove or self.reconfigure or self.annotate or self.refresh_ip)


def meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def pod_uid(pod: Obj) -> str:
    return str(meta(pod).get("uid", ""))


def pod_ref(pod: Obj) -> str:
    m = meta(pod)
    return f"{m.get('namespace') or 'default'}/{m.get('name', '?')}"


def pod_ip(pod: Obj) -> str:
    status = pod.get("status") or {}
    ip = status.get("podIP") or ""
    if not ip:
        for entry in status.get("podIPs") or []:
            if entry.get("ip"):
                return str(entry["ip"])
    return str(ip)


def redirect_config(pod: Obj, *, dns_default: bool = True) -> RedirectConfig:
    """The capture settings of one pod: node defaults + its annotations (DNS capture, inbound bypass)."""
    return RedirectConfig.from_annotations(meta(pod).get("annotations") or {}, dns_default=dns_default)


def workload_info(pod: Obj) -> WorkloadInfo:
    m = meta(pod)
    spec = pod.get("spec") or {}
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return WorkloadInfo(name=str(m.get("name", "")), namespace=str(m.get("namespace") or "default"),
                        service_account=str(sa))


def status_annotation(pod: Obj) -> str | None:
    return (meta(pod).get("annotations") or {}).get(ANNOTATION_STATUS)


def wants_capture(pod: Obj, namespaces: Mapping[str, Obj], cfg: PluginConfig) -> tuple[bool, str]:
    """Should this pod be captured now? (decision, reason). Terminal pods never are."""
    phase = (pod.get("status") or {}).get("phase")
    if phase in TERMINAL_PHASES:
        return False, f"pod phase {phase}"
    ns_name = meta(pod).get("namespace") or "default"
    return decide_enrollment(pod, namespaces.get(ns_name), cfg)


def namespace_enabled(ns: Obj) -> bool:
    return (meta(ns).get("labels") or {}).get(DATAPLANE_LABEL) == "ambient"


def plan(
    tracked: Mapping[str, Tracked],
    pods: Mapping[str, Obj],
    namespaces: Mapping[str, Obj],
    cfg: PluginConfig,
    *,
    dns_default: bool = True,
    busy: frozenset[str] = frozenset(),
) -> Plan:
    """Compare what is captured (`tracked`, by uid) with the API state (`pods` of this node by uid).

    `busy`: uids with an operation in flight (e.g. a CNI ADD): left alone this pass.
    """
    out = Plan()
    for uid in sorted(tracked):
        if uid in busy:
            continue
        t = tracked[uid]
        pod = pods.get(uid)
        if pod is None:
            out.remove.append((uid, "pod deleted"))
            continue
        want, reason = wants_capture(pod, namespaces, cfg)
        if not want:
            out.remove.append((uid, reason))
            continue
        new_cfg = redirect_config(pod, dns_default=dns_default)
        if new_cfg != t.cfg:
            out.reconfigure.append((uid, new_cfg))
        ip = pod_ip(pod)
        if ip and ip != t.ip:
            out.refresh_ip.append((uid, ip))
        if status_annotation(pod) != t.status:
            out.annotate.append(uid)
    for uid in sorted(pods):
        if uid in tracked or uid in busy:
            continue
        pod = pods[uid]
        if not pod_ip(pod):
            continue  # no sandbox yet: the CNI ADD path enrolls it
        if (pod.get("spec") or {}).get("hostNetwork"):
            continue
        want, _ = wants_capture(pod, namespaces, cfg)
        if want:
            out.enroll.append(pod)
    return out


def stale_annotated(pods: Mapping[str, Obj], namespaces: Mapping[str, Obj], cfg: PluginConfig) -> list[str]:
    """At agent start: pods still annotated by a previous agent that must not be captured any more."""
    return sorted(
        uid for uid, pod in pods.items()
        if status_annotation(pod) is not None and not wants_capture(pod, namespaces, cfg)[0]
    )


def namespace_changes(before: Mapping[str, bool], namespaces: Mapping[str, Obj]) -> list[tuple[str, bool]]:
    """(namespace, now enabled) for every namespace whose ambient label changed (new ones if enabled)."""
    changes = []
    for name in sorted(namespaces):
        now = namespace_enabled(namespaces[name])
        if before.get(name, False) != now:
            changes.append((name, now))
    for name in sorted(set(before) - set(namespaces)):
        if before[name]:
            changes.append((name, False))
    return changes


@dataclass(frozen=True)
class CmdAdd:
    """The body of POST /cmdadd from the chained plugin."""

    netns: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    ips: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


class CmdAddParseError(ValueError):
    """The /cmdadd body is not what the plugin sends (answered with HTTP 400)."""


def parse_cmdadd(body: Any) -> CmdAdd:
    if not isinstance(body, dict):
        raise CmdAddParseError("body must be a JSON object")
    missing = [k for k in ("Netns", "PodName", "PodNamespace", "PodUID") if not body.get(k)]
    if missing:
        raise CmdAddParseError(f"missing field(s): {', '.join(missing)}")
    ips = body.get("IPs") or []
    if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
        raise CmdAddParseError("IPs must be a list of strings")
    return CmdAdd(netns=str(body["Netns"]), pod_name=str(body["PodName"]),
                  pod_namespace=str(body["PodNamespace"]), pod_uid=str(body["PodUID"]),
                  ips=tuple(ip.split("/", 1)[0] for ip in ips))
