"""The chained CNI plugin: decides whether a new pod is enrolled and, if so, hands it to the node agent.

Role: runs once per pod sandbox operation (CNI spec 1.0.0: env `CNI_COMMAND` ..., network config JSON with
`prevResult` on stdin, result or error JSON on stdout). On ADD it reads the pod and its namespace from the
cluster API (plain HTTP over a Unix socket, Kubernetes JSON shape), and for an enrolled pod POSTs
`/cmdadd` to the agent over `<agent_run_dir>/pluginevent.sock` (5 s timeout); the agent answers 200 once
the pod's rules are in place and its node proxy acknowledged it (ZDS Ack), so the runtime starts no
container of an enrolled pod before the proxy serves it.

Invariants:
- Fail closed: if an enrolled pod cannot be handed to the agent (agent absent, timeout, non-200) or the
  decision cannot be made (API unreachable), ADD fails with a CNI error, so the runtime retries the
  sandbox and the pod never runs un-captured.
- ADD passes `prevResult` through unchanged (except `cniVersion`); DEL, CHECK, GC and STATUS always
  succeed (deletion is driven by the agent watching pods), so a leftover plugin entry never blocks
  pod deletion.
- Start-up is cheap: stdlib only (no asyncio, no third-party imports); it runs for every pod.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from ambient.cni.errors import CniError

CNI_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
PLUGIN_TYPE = "ambient-cni"
DATAPLANE_LABEL = "istio.io/dataplane-mode"
AMBIENT = "ambient"
AGENT_SOCKET = "pluginevent.sock"
AGENT_TIMEOUT_S = 5.0
API_TIMEOUT_S = 5.0

# CNI spec well-known error codes; 100+ are plugin specific
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_AGENT = 100  # node agent unreachable or refused the pod: the runtime retries the sandbox
ERR_API = 101  # the cluster API could not tell us the pod/namespace labels

_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


class CniPluginError(CniError):
    """An ADD that must fail; rendered as the CNI error JSON {cniVersion, code, msg, details}."""

    def __init__(self, code: int, message: str, details: str = "", *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.details = details

    def to_json(self, cni_version: str = CNI_VERSION) -> dict[str, Any]:
        details = self.details + (f" (hint: {self.hint})" if self.hint else "")
        return {"cniVersion": cni_version, "code": self.code, "msg": self.message, "details": details.strip()}


class PluginConfig:
    """Our entry in the conflist `plugins` (field names as written by `install_plugin`).

    A plain class, not a dataclass: importing `dataclasses` (and `inspect`) costs start-up time.
    """

    def __init__(
        self,
        *,
        cni_version: str = CNI_VERSION,
        name: str = "",
        log_level: str = "info",
        agent_run_dir: str = "/var/run/ambient",
        api_socket: str = "",
        ambient_enabled: bool = True,
        exclude_namespaces: tuple[str, ...] = ("kube-system",),
        proxy_pod_labels: dict[str, str] | None = None,
        prev_result: dict[str, Any] | None = None,
    ) -> None:
        self.cni_version = cni_version
        self.name = name
        self.log_level = log_level
        self.agent_run_dir = agent_run_dir
        self.api_socket = api_socket
        self.ambient_enabled = ambient_enabled
        self.exclude_namespaces = exclude_namespaces
        self.proxy_pod_labels = {"app": "ztunnel"} if proxy_pod_labels is None else proxy_pod_labels
        self.prev_result = prev_result

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PluginConfig:
        if not isinstance(obj, Mapping):
            raise CniPluginError(ERR_INVALID_CONFIG, "network config must be a JSON object")
        excluded = obj.get("exclude_namespaces", ["kube-system"])
        return cls(
            cni_version=str(obj.get("cniVersion", CNI_VERSION)),
            name=str(obj.get("name", "")),
            log_level=str(obj.get("log_level", "info")).lower(),
            agent_run_dir=str(obj.get("agent_run_dir", "/var/run/ambient")),
            api_socket=str(obj.get("api_socket", "")),
            ambient_enabled=bool(obj.get("ambient_enabled", True)),
            exclude_namespaces=tuple(str(n) for n in excluded),
            proxy_pod_labels=dict(obj.get("proxy_pod_labels", {"app": "ztunnel"})),
            prev_result=obj.get("prevResult"),
        )


def parse_cni_args(raw: str) -> dict[str, str]:
    """`IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p` -> dict."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def decide_enrollment(
    pod: Mapping[str, Any], namespace: Mapping[str, Any] | None, cfg: PluginConfig
) -> tuple[bool, str]:
    """Pure decision: (enrolled, reason). `namespace` may be None when the pod label already decides."""
    meta = pod.get("metadata", {}) or {}
    ns_name = meta.get("namespace", "")
    labels: Mapping[str, str] = meta.get("labels", {}) or {}
    if not cfg.ambient_enabled:
        return False, "ambient disabled in plugin config"
    if ns_name in cfg.exclude_namespaces:
        return False, f"namespace {ns_name} is excluded"
    if (pod.get("spec", {}) or {}).get("hostNetwork"):
        return False, "host-network pod"
    if cfg.proxy_pod_labels and all(labels.get(k) == v for k, v in cfg.proxy_pod_labels.items()):
        return False, "the node proxy's own pod"
    if "sidecar.istio.io/status" in (meta.get("annotations") or {}):
        return False, "pod has a sidecar"
    pod_mode = labels.get(DATAPLANE_LABEL)
    if pod_mode == "none":
        return False, f"pod label {DATAPLANE_LABEL}=none"
    if pod_mode == AMBIENT:
        return True, f"pod label {DATAPLANE_LABEL}=ambient"
    ns_labels = ((namespace or {}).get("metadata", {}) or {}).get("labels", {}) or {}
    if ns_labels.get(DATAPLANE_LABEL) == AMBIENT:
        return True, f"namespace label {DATAPLANE_LABEL}=ambient"
    return False, "not labelled for ambient"


def _decode_chunked(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _request(sock_path: str, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 request over a Unix socket with `Connection: close`; returns (status, body).

    Hand-rolled on purpose: importing `http.client` costs ~25 ms, half of the plugin's start-up, and the
    plugin runs for every pod. Raises OSError on any transport problem (incl. a malformed answer).
    """
    deadline = time.monotonic() + timeout
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close", "Accept: application/json"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(request)
        chunks = []
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header_end = raw.find(b"\r\n\r\n")
    if header_end < 0:
        raise OSError(f"incomplete HTTP answer from {sock_path} ({len(raw)} bytes)")
    lines = raw[:header_end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError) as e:
        raise OSError(f"malformed HTTP status line from {sock_path}: {lines[0]!r}") from e
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    payload = raw[header_end + 4 :]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        try:
            payload = _decode_chunked(payload)
        except ValueError as e:
            raise OSError(f"malformed chunked body from {sock_path}") from e
    elif "content-length" in headers:
        payload = payload[: int(headers["content-length"])]
    return status, payload


def api_get(sock_path: str, path: str, timeout: float = API_TIMEOUT_S) -> dict[str, Any]:
    try:
        status, body = _request(sock_path, "GET", path, None, timeout)
    except OSError as e:
        raise CniPluginError(
            ERR_API,
            f"cluster API not reachable at {sock_path}",
            f"GET {path}: {e}",
            hint="is the cluster API server running? (api_socket in the CNI config)",
        ) from e
    if status != 200:
        raise CniPluginError(
            ERR_API, f"cluster API answered {status} for GET {path}", body[:300].decode(errors="replace")
        )
    try:
        obj = json.loads(body)
    except ValueError as e:
        raise CniPluginError(ERR_API, f"cluster API sent invalid JSON for GET {path}", str(e)) from e
    return obj if isinstance(obj, dict) else {}


def notify_agent(run_dir: str, payload: Mapping[str, Any], timeout: float = AGENT_TIMEOUT_S) -> None:
    """POST /cmdadd to the node agent; any failure raises (fail closed)."""
    sock_path = f"{run_dir.rstrip('/')}/{AGENT_SOCKET}"
    who = f"{payload.get('PodNamespace')}/{payload.get('PodName')}"
    try:
        status, body = _request(sock_path, "POST", "/cmdadd", json.dumps(payload).encode(), timeout)
    except OSError as e:
        raise CniPluginError(
            ERR_AGENT,
            f"node agent not reachable at {sock_path}; pod {who} not started un-captured",
            str(e),
            hint="start `ambient node-agent` on this node; the runtime retries the pod sandbox",
        ) from e
    if status != 200:
        reason = ""
        try:  # the agent's reason belongs in the message: it is what the pod's status shows
            answer = json.loads(body)
            reason = str(answer.get("error") or "") if isinstance(answer, dict) else ""
        except ValueError:
            pass
        raise CniPluginError(
            ERR_AGENT,
            f"node agent refused pod {who} (HTTP {status})" + (f": {reason[:300]}" if reason else ""),
            body[:500].decode(errors="replace"),
            hint="see the node agent log for this pod",
        )


def _pod_ips(prev: Mapping[str, Any] | None) -> list[str]:
    ips = []
    for entry in (prev or {}).get("ips", []) or []:
        addr = str(entry.get("address", ""))
        if addr:
            ips.append(addr.split("/", 1)[0])
    return ips


def _log(cfg: PluginConfig, level: str, msg: str) -> None:
    if _LEVELS[level] >= _LEVELS.get(cfg.log_level, 20):
        print(f"ambient-cni {level}: {msg}", file=sys.stderr)


def cmd_add(env: Mapping[str, str], cfg: PluginConfig) -> dict[str, Any]:
    """ADD: returns the result to print; raises CniPluginError to fail the ADD."""
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
        if not env.get(var):
            raise CniPluginError(ERR_INVALID_ENV, f"{var} is not set", "required for ADD by the CNI spec")
    result = dict(cfg.prev_result) if cfg.prev_result else {}
    result["cniVersion"] = cfg.cni_version
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not cfg.ambient_enabled or not ns or not name:
        _log(cfg, "debug", f"skip {env['CNI_CONTAINERID']}: ambient disabled or not a Kubernetes pod")
        return result
    if ns in cfg.exclude_namespaces:  # decided without any API call
        _log(cfg, "debug", f"skip {ns}/{name}: namespace excluded")
        return result
    if not cfg.api_socket:
        raise CniPluginError(
            ERR_INVALID_CONFIG,
            "api_socket is not set in the plugin config",
            hint="reinstall the plugin with install_plugin(..., config={'api_socket': ...})",
        )
    pod = api_get(cfg.api_socket, f"/api/v1/namespaces/{ns}/pods/{name}")
    pod.setdefault("metadata", {}).setdefault("namespace", ns)
    namespace = None
    if (pod["metadata"].get("labels") or {}).get(DATAPLANE_LABEL) is None:
        namespace = api_get(cfg.api_socket, f"/api/v1/namespaces/{ns}")
    enrolled, reason = decide_enrollment(pod, namespace, cfg)
    if not enrolled:
        _log(cfg, "info", f"pod {ns}/{name} not enrolled: {reason}")
        return result
    uid = args.get("K8S_POD_UID") or str(pod["metadata"].get("uid", ""))
    payload = {
        "Netns": env["CNI_NETNS"],
        "PodName": name,
        "PodNamespace": ns,
        "PodUID": uid,
        "IPs": _pod_ips(cfg.prev_result),
    }
    notify_agent(cfg.agent_run_dir, payload)
    _log(cfg, "info", f"pod {ns}/{name} enrolled ({reason}), handed to the node agent")
    return result


def run(env: Mapping[str, str], stdin: str) -> tuple[int, str]:
    """One plugin invocation: (exit code, stdout text). Never raises."""
    command = env.get("CNI_COMMAND", "")
    version = CNI_VERSION
    try:
        try:
            raw = json.loads(stdin) if stdin.strip() else {}
        except ValueError as e:
            raise CniPluginError(ERR_DECODE, "network config on stdin is not valid JSON", str(e)) from e
        if isinstance(raw, dict):
            version = str(raw.get("cniVersion", CNI_VERSION))
        if command == "VERSION":
            return 0, json.dumps({"cniVersion": CNI_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)})
        if command in ("DEL", "CHECK", "GC", "STATUS"):
            return 0, ""  # deletion is driven by the agent watching pods: never block it
        if command != "ADD":
            raise CniPluginError(
                ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}", "expected ADD, DEL, CHECK or VERSION"
            )
        cfg = PluginConfig.from_json(raw)
        return 0, json.dumps(cmd_add(env, cfg))
    except CniPluginError as e:
        print(f"ambient-cni error: {e}", file=sys.stderr)
        return 1, json.dumps(e.to_json(version))
    except Exception as e:  # a bug must still produce a CNI error, not a traceback the runtime can't parse
        err = CniPluginError(999, f"ambient-cni internal error: {type(e).__name__}: {e}")
        return 1, json.dumps(err.to_json(version))
