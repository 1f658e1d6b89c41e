"""Port-forward target parsing and resolution (pure: the API is a dict lookup here)."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.api.errors import NotFoundError
from ambient.cluster import portforward as pf

OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("Service", "web"): {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ("Endpoints", "web"): {"subsets": [{"addresses": [{"ip": "10.244.2.7", "targetRef": {"name": "web-1"}}],
                                        "ports": [{"name": "http", "port": 8080}]}]},
    ("Pod", "web-1"): {"metadata": {"name": "web-1", "namespace": "default", "uid": "0123456789abcdef"},
                       "status": {"phase": "Running", "podIP": "10.244.2.7"}},
    ("Pod", "pending"): {"metadata": {"name": "pending", "namespace": "default", "uid": "ffff"},
                         "status": {"phase": "Pending"}},
    ("Service", "empty"): {"spec": {"ports": [{"port": 80}]}},
    ("Endpoints", "empty"): {"subsets": []},
}


def get(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    try:
        return OBJECTS[(kind, name)]
    except KeyError:
        raise NotFoundError(f"{kind} {name} not found") from None


def test_parse_ports() -> None:
    assert pf.parse_ports("8080:80") == (8080, 80)
    assert pf.parse_ports("9000") == (9000, 9000)
    assert pf.parse_ports("0:80") == (0, 80)
    for bad in ("x:80", "80:0", "70000:80"):
        with pytest.raises(pf.PortForwardError):
            pf.parse_ports(bad)


def test_service_resolves_ready_endpoint_and_target_port() -> None:
    t = pf.resolve_target("c1", get, "Service", "web", "default", 80)
    assert t == pf.Target("amb-c1-pod-0123456789ab", "10.244.2.7", 8080, "web-1")


def test_pod_target_and_errors() -> None:
    assert pf.resolve_target("c1", get, "Pod", "web-1", "default", 9000).port == 9000
    with pytest.raises(pf.PortForwardError, match="not running"):
        pf.resolve_target("c1", get, "Pod", "pending", "default", 80)
    with pytest.raises(pf.PortForwardError, match="has no port 81"):
        pf.resolve_target("c1", get, "Service", "web", "default", 81)
    with pytest.raises(pf.PortForwardError, match="no ready endpoints"):
        pf.resolve_target("c1", get, "Service", "empty", "default", 80)
