"""The waypoint settings of the cluster's environment reach the waypoint pods (a pod's env starts clean)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ambient.cli.waypoint import gateway_manifest
from ambient.cluster import waypoints as W


def _deployment(cfg: W.WaypointConfig) -> dict[str, Any]:
    gw = gateway_manifest("waypoint", "shop", "service")
    gw["metadata"].update(uid="gw-uid", generation=1)
    return next(o for o in W.plan_waypoint(gw, cfg) if o["kind"] == "Deployment")


def _env(deploy: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(("environ", "want"), [
    ({"AMBIENT_WAYPOINT_WORKERS": "auto"}, "auto"),
    ({"AMBIENT_WAYPOINT_WORKERS": "2", "AMBIENT_ZTUNNEL_WORKERS": "2"}, "2"),
    ({"AMBIENT_WAYPOINT_WORKERS": " "}, None),
    ({}, None),
])
def test_waypoint_workers_setting_is_passed_to_the_pods(tmp_path: Path, environ: dict[str, str],
                                                         want: str | None) -> None:
    env = _env(_deployment(W.WaypointConfig.for_state_dir(tmp_path, environ)))
    assert env.get("AMBIENT_WAYPOINT_WORKERS") == want
    assert "AMBIENT_ZTUNNEL_WORKERS" not in env  # only the waypoint's own settings
    assert {"POD_NAME", "POD_IP"} <= set(env)


def test_unset_setting_leaves_the_plan_as_it_was(tmp_path: Path) -> None:
    """No rollout of existing waypoints when the setting is not used; a changed setting rolls them."""
    plain = _deployment(W.WaypointConfig.for_state_dir(tmp_path, {}))
    assert plain == _deployment(W.WaypointConfig(root_cert=str(tmp_path / "ca" / "root-cert.pem"),
                                                 api_socket=str(tmp_path / "apiserver.sock")))
    two = _deployment(W.WaypointConfig.for_state_dir(tmp_path, {"AMBIENT_WAYPOINT_WORKERS": "2"}))
    h = W.HASH_ANNOTATION
    assert two["metadata"]["annotations"][h] != plain["metadata"]["annotations"][h]
