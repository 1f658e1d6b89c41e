"""Pod probe fields at the API: what the local kubelet can run is accepted, the rest refused with the field."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.api.errors import ValidationError
from ambient.api.validation import validate_object


def pod_with(**probes: Any) -> dict[str, Any]:
    container = {"name": "app", "command": ["sleep", "1"], "ports": [{"name": "http", "containerPort": 8080}],
                 **probes}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [container]}}


@pytest.mark.parametrize("probes", [
    {"livenessProbe": {"httpGet": {"path": "/status/500", "port": "http"}, "periodSeconds": 1,
                       "failureThreshold": 2, "initialDelaySeconds": 0, "timeoutSeconds": 2}},
    {"readinessProbe": {"tcpSocket": {"port": 8080}, "successThreshold": 3}},
    {"startupProbe": {"exec": {"command": ["test", "-f", "/tmp/x"]}, "failureThreshold": 30,
                      "terminationGracePeriodSeconds": 5},
     "readinessProbe": {"httpGet": {"port": 8080, "scheme": "HTTPS", "httpHeaders": [{"name": "X", "value": "1"}]}}},
])
def test_probes_accepted(probes: dict[str, Any]) -> None:
    validate_object(pod_with(**probes))


P = "spec.containers[0]"


@pytest.mark.parametrize(("probes", "message"), [
    ({"livenessProbe": {"periodSeconds": 1}},
     f"{P}.livenessProbe: expected exactly one handler of exec, httpGet, tcpSocket, got \"none\""),
    ({"livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}},
     f"{P}.livenessProbe: expected exactly one handler of exec, httpGet, tcpSocket, got \"exec, tcpSocket\""),
    ({"livenessProbe": {"grpc": {"port": 9}}}, f"{P}.livenessProbe.grpc: expected exec, httpGet or tcpSocket"),
    ({"livenessProbe": {"httpGet": {"port": 0}}}, f"{P}.livenessProbe.httpGet.port: expected an integer 1-65535"),
    ({"readinessProbe": {"tcpSocket": {"port": "Not A Name"}}}, f"{P}.readinessProbe.tcpSocket.port: expected a port"),
    ({"livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 0}},
     f"{P}.livenessProbe.periodSeconds: expected an integer >= 1, got 0"),
    ({"livenessProbe": {"httpGet": {"port": 80}, "failureThreshold": "3"}},
     f"{P}.livenessProbe.failureThreshold: expected an integer >= 1"),
    ({"startupProbe": {"httpGet": {"port": 80}, "successThreshold": 2}},
     f"{P}.startupProbe.successThreshold: expected 1 (liveness and startup probes), got 2"),
    ({"livenessProbe": {"httpGet": {"port": 80, "scheme": "ftp"}}},
     f"{P}.livenessProbe.httpGet.scheme: expected"),
])
def test_probe_errors_name_the_field(probes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_object(pod_with(**probes))
    assert info.value.message.startswith(message), info.value.message
