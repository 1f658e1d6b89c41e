"""Strict field validation and size limits of the API server, over its socket (raw HTTP, `ApiClient`) and
through the CLI (`ambient apply` / `ambient create -f` with `--validate`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from ambient.api.client import ApiClient, parse_warning
from ambient.api.errors import NotFoundError, TooLargeError, ValidationError
from ambient.api.server import ApiServer, serve_in_thread, warning_header
from ambient.cli.main import app

Obj = dict[str, Any]
AP_PATH = "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies"
TYPO_FIELD = "spec.rules[0].from[0].source.principal"
TYPO_POLICY: Obj = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "allow-typo", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principal": ["cluster.local/ns/default/sa/client"]}}]}],
    },
}
TYPO_YAML = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-typo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source:
        principal: [cluster.local/ns/default/sa/client]
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    with serve_in_thread(tmp_path / "state") as srv:
        yield srv


@pytest.fixture
def http(server: ApiServer) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(server.socket_path))
    with httpx.Client(transport=transport, base_url="http://apiserver", timeout=60) as client:
        yield client


@pytest.fixture
def api(server: ApiServer) -> Iterator[ApiClient]:
    with ApiClient(server.socket_path) as client:
        yield client


def cli(server: ApiServer, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--state-dir", str(server.state_dir), *args], input=input)


def _post(http: httpx.Client, obj: Any, params: dict[str, str] | None = None) -> httpx.Response:
    return http.post(AP_PATH, content=json.dumps(obj), params=params or {},
                     headers={"Content-Type": "application/json"})


# ----------------------------------------------------------------------------- field validation, over HTTP


def test_the_typo_policy_is_refused_by_default_and_not_stored(http: httpx.Client, api: ApiClient) -> None:
    response = _post(http, TYPO_POLICY)
    assert response.status_code == 400
    status = response.json()
    assert status["reason"] == "BadRequest"
    assert status["message"] == (
        f'AuthorizationPolicy default/allow-typo: strict decoding error: unknown field "{TYPO_FIELD}"'
    )
    assert status["hint"] == 'did you mean "spec.rules[0].from[0].source.principals"?'
    with pytest.raises(NotFoundError):
        api.get("authorizationpolicy", "allow-typo", "default")
    assert _post(http, TYPO_POLICY, {"fieldValidation": "Strict"}).status_code == 400


def test_warn_stores_without_the_field_and_sends_a_warning_header(http: httpx.Client, api: ApiClient) -> None:
    response = _post(http, TYPO_POLICY, {"fieldValidation": "Warn"})
    assert response.status_code == 201
    assert response.headers.get_list("warning") == [f'299 - "unknown field \\"{TYPO_FIELD}\\""']
    assert response.json()["spec"]["rules"][0]["from"][0]["source"] == {}
    assert api.get("authorizationpolicy", "allow-typo", "default")["spec"]["rules"] == [{"from": [{"source": {}}]}]


def test_ignore_drops_silently(http: httpx.Client) -> None:
    response = _post(http, TYPO_POLICY, {"fieldValidation": "Ignore"})
    assert response.status_code == 201
    assert "warning" not in response.headers
    assert response.json()["spec"]["rules"][0]["from"][0]["source"] == {}


def test_an_unknown_field_validation_value_is_a_bad_request(http: httpx.Client) -> None:
    response = _post(http, TYPO_POLICY, {"fieldValidation": "strict"})
    assert response.status_code == 422
    assert response.json()["message"] == ('CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported '
                                          'value: "strict": supported values: "", "Ignore", "Strict", "Warn"')


def test_client_update_patch_and_apply_honour_field_validation(server: ApiServer) -> None:
    seen: list[str] = []
    with ApiClient(server.socket_path, on_warning=seen.append) as api:
        good = copy.deepcopy(TYPO_POLICY)
        good["spec"]["rules"][0]["from"][0]["source"] = {"principals": ["cluster.local/ns/default/sa/client"]}
        stored = api.create(good)
        # update (PUT): the stored object round-trips strictly (uid, creationTimestamp, resourceVersion...)
        stored["spec"]["action"] = "DENY"
        stored = api.update(stored)
        bad = copy.deepcopy(stored)
        bad["spec"]["rules"][0]["to"] = [{"operation": {"port": ["80"]}}]
        with pytest.raises(ValidationError, match=r'unknown field "spec\.rules\[0\]\.to\[0\]\.operation\.port"'):
            api.update(bad)
        api.update(bad, field_validation="Warn")
        assert seen == ['unknown field "spec.rules[0].to[0].operation.port"']
        # patch: the patch's own unknown fields
        patch = {"spec": {"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}}
        with pytest.raises(ValidationError, match=r'AuthorizationPolicy default/allow-typo: strict decoding error'):
            api.patch("authorizationpolicy", "allow-typo", "default", patch)
        patched = api.patch("authorizationpolicy", "allow-typo", "default", patch, field_validation="Ignore")
        assert patched["spec"]["rules"] == [{"from": [{"source": {}}]}]
        # batch apply: the item and the object are named
        with pytest.raises(ValidationError) as info:
            api.apply_many([good, TYPO_POLICY])
        assert info.value.message == (f'item 2 (AuthorizationPolicy default/allow-typo): strict decoding error: '
                                      f'unknown field "{TYPO_FIELD}"')
        seen.clear()
        api.apply_many([TYPO_POLICY], field_validation="Warn")
        assert seen == [f'AuthorizationPolicy default/allow-typo: unknown field "{TYPO_FIELD}"']


def test_warning_headers_are_safe_and_bounded(http: httpx.Client) -> None:
    policy = copy.deepcopy(TYPO_POLICY)
    policy["spec"] = {f'x"\r\n{i}\u00e9': 1 for i in range(30)}
    response = _post(http, policy, {"fieldValidation": "Warn"})
    assert response.status_code == 201
    warnings = response.headers.get_list("warning")
    assert len(warnings) == 21 and parse_warning(warnings[-1]) == "10 more warnings not shown"
    assert parse_warning(warnings[0]) == 'unknown field "spec.x\\"\\r\\n0\\u00e9"'
    assert parse_warning(warning_header('a "quoted" \\ text')) == 'a "quoted" \\ text'


DUPLICATE_BODY = ('{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", '
                  '"metadata": {"name": "deny-client"}, "spec": {"action": "DENY", "action": "ALLOW"}}')


def test_a_field_given_twice_is_refused_warned_or_ignored(http: httpx.Client, api: ApiClient) -> None:
    headers = {"Content-Type": "application/json"}
    refused = http.post(AP_PATH, content=DUPLICATE_BODY, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        'AuthorizationPolicy default/deny-client: strict decoding error: duplicate field "spec.action"'
    )
    warned = http.post(AP_PATH, content=DUPLICATE_BODY, headers=headers, params={"fieldValidation": "Warn"})
    assert warned.status_code == 201
    assert [parse_warning(w) for w in warned.headers.get_list("warning")] == ['duplicate field "spec.action"']
    assert api.get("authorizationpolicy", "deny-client", "default")["spec"]["action"] == "ALLOW"
    batch = '{"items": [' + DUPLICATE_BODY + "]}"
    refused = http.post("/ambient/v1/apply", content=batch, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["message"] == ('item 1 (AuthorizationPolicy default/deny-client): strict decoding '
                                         'error: duplicate field "spec.action"')


def test_cli_refuses_a_yaml_field_written_twice(server: ApiServer) -> None:
    text = TYPO_YAML.replace("action: ALLOW", "action: DENY").replace(
        "principal:", "principals:") + "  action: ALLOW\n"
    result = cli(server, "apply", "-f", "-", input=text)
    assert result.exit_code == 1
    assert 'STDIN: strict decoding error: line 11: duplicate field "action" (also at line 6)' in result.stderr
    warned = cli(server, "apply", "-f", "-", "--validate=warn", input=text)
    assert warned.exit_code == 0, warned.output
    assert warned.stderr == 'Warning: STDIN: line 11: duplicate field "action" (also at line 6)\n'


# ----------------------------------------------------------------------------- field validation, CLI


def test_cli_apply_refuses_the_typo_policy_naming_file_document_and_field(server: ApiServer, tmp_path: Path,
                                                                          api: ApiClient) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(TYPO_YAML)
    result = cli(server, "apply", "-f", str(path))
    assert result.exit_code == 1
    assert (f'error: {path}: document 1 (AuthorizationPolicy "allow-typo"): strict decoding error: '
            f'unknown field "{TYPO_FIELD}"') in result.stderr
    assert 'did you mean "spec.rules[0].from[0].source.principals"?' in result.stderr
    with pytest.raises(NotFoundError):
        api.get("authorizationpolicy", "allow-typo", "default")
    assert cli(server, "apply", "-f", str(path), "--validate=true").exit_code == 1
    assert cli(server, "create", "-f", str(path)).exit_code == 1


def test_cli_apply_warn_prints_the_server_warning_and_drops_the_field(server: ApiServer, api: ApiClient) -> None:
    result = cli(server, "apply", "-f", "-", "--validate=warn", input=TYPO_YAML)
    assert result.exit_code == 0, result.output
    assert result.stdout == "authorizationpolicy.security.istio.io/allow-typo created\n"
    assert result.stderr == f'Warning: AuthorizationPolicy default/allow-typo: unknown field "{TYPO_FIELD}"\n'
    assert api.get("authorizationpolicy", "allow-typo", "default")["spec"]["rules"] == [{"from": [{"source": {}}]}]


@pytest.mark.parametrize("flag", ["--validate=ignore", "--validate=false"])
def test_cli_apply_ignore_drops_silently(server: ApiServer, flag: str) -> None:
    result = cli(server, "apply", "-f", "-", flag, input=TYPO_YAML)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_cli_create_warn_and_bad_flag(server: ApiServer, api: ApiClient) -> None:
    result = cli(server, "create", "-f", "-", "--validate", "warn", input=TYPO_YAML)
    assert result.exit_code == 0, result.output
    assert result.stdout == "authorizationpolicy.security.istio.io/allow-typo created\n"
    assert result.stderr == f'Warning: unknown field "{TYPO_FIELD}"\n'
    again = cli(server, "create", "-f", "-", "--validate=ignore", input=TYPO_YAML)
    assert again.exit_code == 1 and "already exists" in again.stderr
    bad = cli(server, "apply", "-f", "-", "--validate=maybe", input=TYPO_YAML)
    assert bad.exit_code != 0 and 'invalid --validate value "maybe"' in bad.stderr


def test_cli_dry_run_warn_checks_locally(server: ApiServer) -> None:
    result = cli(server, "apply", "-f", "-", "--dry-run", "--validate=warn", input=TYPO_YAML)
    assert result.exit_code == 0, result.output
    assert result.stderr == f'Warning: AuthorizationPolicy default/allow-typo: unknown field "{TYPO_FIELD}"\n'


def test_cli_refuses_a_100000_deep_yaml(server: ApiServer) -> None:
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: deep}\nstatus: " + "[" * 100_000 + "]" * 100_000 + "\n"
    result = cli(server, "apply", "-f", "-", input=text)
    assert result.exit_code == 1
    assert "STDIN: nested too deeply: at most 100 levels of objects and lists" in result.stderr


# ----------------------------------------------------------------------------- size and shape limits


def test_a_10_mb_annotation_is_refused_before_it_is_read(http: httpx.Client) -> None:
    policy = copy.deepcopy(TYPO_POLICY)
    policy["spec"] = {}
    policy["metadata"]["annotations"] = {"big": "x" * 10_000_000}
    response = _post(http, policy)
    assert response.status_code == 413
    assert response.json()["message"] == "Request entity too large: limit is 3145728"
    assert response.json()["reason"] == "RequestEntityTooLarge"


def test_annotations_over_256_kib_are_invalid(http: httpx.Client) -> None:
    policy = copy.deepcopy(TYPO_POLICY)
    policy["spec"] = {}
    policy["metadata"]["annotations"] = {"big": "x" * 300_000}
    response = _post(http, policy)
    assert response.status_code == 422
    assert response.json()["message"].startswith(
        "metadata.annotations: Too long: must have at most 262144 bytes"
    )


def test_a_7_mb_policy_is_refused_and_a_2_mb_one_is_over_the_object_limit(http: httpx.Client,
                                                                          api: ApiClient) -> None:
    policy = copy.deepcopy(TYPO_POLICY)
    principals = [f"cluster.local/ns/default/sa/client-{i:07d}" for i in range(180_000)]  # ~7.6 MB
    policy["spec"]["rules"] = [{"from": [{"source": {"principals": principals}}]}]
    assert _post(http, policy).status_code == 413
    policy["spec"]["rules"] = [{"from": [{"source": {"principals": principals[:50_000]}}]}]  # ~2.1 MB
    with pytest.raises(TooLargeError) as info:
        api.create(policy)
    assert info.value.message == (
        'authorizationpolicies "allow-typo" in namespace "default": request is too large: the object is '
        f'{info.value.message.split("the object is ")[1].split(" ")[0]} bytes stored, the limit is 1572864'
    )
    assert int(info.value.message.split("the object is ")[1].split(" ")[0]) > 2_000_000


def test_status_writes_are_capped_too(api: ApiClient) -> None:
    good = copy.deepcopy(TYPO_POLICY)
    good["spec"] = {}
    api.create(good)
    with pytest.raises(TooLargeError, match="request is too large"):
        api.patch("authorizationpolicy", "allow-typo", "default",
                  {"status": {"conditions": [{"message": "x" * 1_000_000}, {"message": "y" * 1_000_000}]}},
                  status=True)


@pytest.mark.parametrize("depth", [150, 100_000])
def test_a_deep_json_body_is_a_bad_request(http: httpx.Client, api: ApiClient, depth: int) -> None:
    body = '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "deep"}, "status": ' + \
        "[" * depth + "]" * depth + "}"
    for method, path in (("POST", "/api/v1/namespaces/default/pods"), ("PUT", "/api/v1/namespaces/default/pods/deep"),
                         ("PATCH", "/api/v1/namespaces/default/pods/deep"), ("POST", "/ambient/v1/apply")):
        content = body if path != "/ambient/v1/apply" else '{"items": [' + body + "]}"
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        response = http.request(method, path, content=content, headers={"Content-Type": ctype})
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["message"] == (
            "request body is nested too deeply: at most 100 levels of objects and lists"
        )
    assert api.healthy()


def test_limits_are_settings(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "small", max_request_bytes=2000, max_object_bytes=1000) as srv, \
            ApiClient(srv.socket_path) as api:
        policy = copy.deepcopy(TYPO_POLICY)
        policy["spec"] = {}
        policy["metadata"]["annotations"] = {"a": "x" * 1500}
        with pytest.raises(TooLargeError, match="the limit is 1000"):
            api.create(policy)
        policy["metadata"]["annotations"] = {"a": "x" * 2500}
        with pytest.raises(TooLargeError, match="Request entity too large: limit is 2000"):
            api.create(policy)


def test_objects_stored_before_strict_validation_are_reported_at_start(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from ambient.api.store import Store

    store = Store(tmp_path)
    good = copy.deepcopy(TYPO_POLICY)
    good["spec"]["rules"] = []
    store.create(good)
    # what an older version (unknown fields kept) left in the database
    store._db.execute("UPDATE objects SET data = ? WHERE kind = 'AuthorizationPolicy'",
                      (json.dumps({**good, "spec": TYPO_POLICY["spec"]}),))
    store.close()
    with caplog.at_level("WARNING", logger="ambient.apiserver"), serve_in_thread(tmp_path) as server, \
            ApiClient(server.socket_path) as api:
        assert any(f'AuthorizationPolicy default/allow-typo: unknown field "{TYPO_FIELD}"' in r.getMessage()
                   for r in caplog.records)
        # a patch drops the stale field instead of failing on it
        patched = api.patch("authorizationpolicy", "allow-typo", "default", {"spec": {"action": "DENY"}})
        assert patched["spec"]["rules"] == [{"from": [{"source": {}}]}]
