"""The scrape config `ambient prometheus-targets` writes: file_sd groups per forwarded endpoint, one job."""

from __future__ import annotations

import json
from pathlib import Path

from ambient.cli.prometheus import Endpoint, file_sd, scrape_config


def test_file_sd_groups_and_config() -> None:
    zt = Endpoint("amb-c-node-1", "127.0.0.1", 15020, (("cluster", "c"), ("component", "ztunnel"), ("node", "node-1")))
    wp = Endpoint("amb-c-pod-1", "127.0.0.1", 15020, (("cluster", "c"), ("component", "waypoint"), ("pod", "w")))
    assert file_sd([(zt, 4001), (wp, 4002)]) == [
        {"targets": ["127.0.0.1:4002"], "labels": {"cluster": "c", "component": "waypoint", "pod": "w"}},
        {"targets": ["127.0.0.1:4001"], "labels": {"cluster": "c", "component": "ztunnel", "node": "node-1"}},
    ]
    doc = json.loads(scrape_config(Path("/x/targets.json"), "5s"))  # YAML is a superset of JSON
    job = doc["scrape_configs"][0]
    assert job["job_name"] == "ambient" and job["file_sd_configs"][0]["files"] == ["/x/targets.json"]
    assert doc["global"]["scrape_interval"] == "5s"
