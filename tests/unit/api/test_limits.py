"""Shape limits of manifests (`ambient.api.limits`): deep nesting and alias bombs are refused with a clear
message before libyaml's recursive composer or any other recursive code sees them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ambient.api.errors import ValidationError
from ambient.api.limits import MAX_NESTING_DEPTH, check_yaml_shape, exceeds_depth
from ambient.api.manifests import load_manifests

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: app}]}\n"


def test_exceeds_depth_counts_levels() -> None:
    assert not exceeds_depth({"a": [{"b": 1}]}, 3)
    assert exceeds_depth({"a": [{"b": {}}]}, 3)
    assert not exceeds_depth("scalar", 0)


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 10_000, 100_000])
def test_deep_flow_yaml_is_refused(depth: int) -> None:
    text = POD + "status: {x: " + "[" * depth + "]" * depth + "}\n"
    with pytest.raises(ValidationError, match=r"^deep\.yaml: nested too deeply: at most 100 levels"):
        load_manifests(text, "deep.yaml")


def test_deep_block_yaml_is_refused() -> None:
    text = POD + "status:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 150)) + " " * 150 + "x: 1\n"
    with pytest.raises(ValidationError, match="nested too deeply"):
        load_manifests(text, "deep.yaml")


def test_deep_json_manifest_is_refused() -> None:
    text = '{"apiVersion": "v1", "kind": "Pod", "status": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ValidationError, match=r"^deep\.json: nested too deeply"):
        load_manifests(text, "deep.json")


def test_alias_bomb_is_refused_before_it_is_composed() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for i in range(9):
        lines.append(f"b{i}: &b{i} [" + ", ".join([f"*{prev}"] * 10) + "]")
        prev = f"b{i}"
    with pytest.raises(ValidationError, match="excessive aliasing"):
        load_manifests(POD + "status:\n" + "\n".join("  " + line for line in lines) + "\n", "bomb.yaml")


def test_deep_nesting_through_aliases_is_refused() -> None:
    lines = ["a: &a {x: 1}"] + [f"b{i}: &b{i} [*{'b' + str(i - 1) if i else 'a'}]" for i in range(120)]
    with pytest.raises(ValidationError, match=r"nested too deeply: at most 100 levels .* \(through an alias\)"):
        check_yaml_shape("\n".join(lines), yaml.CSafeLoader, "x")


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: &l {app: web}}\n"
            "spec:\n  containers:\n  - &c {name: app, command: [sleep, '1']}\n  - {<<: *c, name: two}\n"
            "  nodeSelector: *l\n")
    (obj,) = load_manifests(text, "ok.yaml")
    assert obj["spec"]["containers"][1] == {"name": "two", "command": ["sleep", "1"]}


def test_the_cli_refuses_a_100000_deep_yaml_without_crashing(tmp_path: object) -> None:
    # A subprocess: before the fix, libyaml's recursive composer crashed the whole process (SIGSEGV).
    code = (
        "import sys\nfrom ambient.api.manifests import load_manifests\nfrom ambient.api.errors import ApiError\n"
        "text = 'status: ' + '[' * 100000 + ']' * 100000\n"
        "try:\n    load_manifests(text, 'deep.yaml')\nexcept ApiError as e:\n    print(e.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deep.yaml: nested too deeply: at most 100 levels of objects and lists"
