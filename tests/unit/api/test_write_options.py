"""Write options as kube-apiserver reads them (`ambient.api.options`): dryRun, fieldManager, force, and the
DeleteOptions body; refusals with Kubernetes' status, message and causes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ambient.api.errors import BadRequestError
from ambient.api.options import (
    APPLY_PATCH,
    DeleteBody,
    InvalidOptionsError,
    WriteOptions,
    go_quote,
    read_delete_body,
    write_options,
)

MERGE = "application/merge-patch+json"


@pytest.mark.parametrize(("method", "kwargs", "want"), [
    ("POST", {"dry_run": []}, WriteOptions()),
    ("POST", {"dry_run": ["All"]}, WriteOptions(dry_run=True)),
    ("PUT", {"dry_run": ["All", "All"]}, WriteOptions(dry_run=True)),
    ("PATCH", {"dry_run": ["All"], "patch_type": MERGE, "field_manager": "kubectl-client-side-apply"},
     WriteOptions(dry_run=True, field_manager="kubectl-client-side-apply")),
    ("PATCH", {"dry_run": [], "patch_type": APPLY_PATCH, "field_manager": "kubectl", "force": "true"},
     WriteOptions(field_manager="kubectl", force=True)),
    ("PATCH", {"dry_run": [], "patch_type": APPLY_PATCH, "field_manager": "kubectl", "force": "False"},
     WriteOptions(field_manager="kubectl")),
    ("DELETE", {"dry_run": ["All"]}, WriteOptions(dry_run=True)),
])
def test_accepted_options(method: str, kwargs: dict[str, Any], want: WriteOptions) -> None:
    assert write_options(method, **kwargs) == want


@pytest.mark.parametrize(("method", "kwargs", "message", "causes"), [
    ("POST", {"dry_run": ["Al"]},
     'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Al"}: supported values: "All"',
     [("FieldValueNotSupported", "dryRun")]),
    # the empty value is refused too: a dry run is never silently turned into a write
    ("PUT", {"dry_run": [""]},
     'UpdateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{""}: supported values: "All"',
     [("FieldValueNotSupported", "dryRun")]),
    ("DELETE", {"dry_run": ["All", "true"]},
     'DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"All", "true"}: '
     'supported values: "All"', [("FieldValueNotSupported", "dryRun")]),
    ("PATCH", {"dry_run": [], "patch_type": APPLY_PATCH},
     'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
     [("FieldValueRequired", "fieldManager")]),
    ("PATCH", {"dry_run": ["x"], "patch_type": MERGE, "force": "true"},
     'PatchOptions.meta.k8s.io "" is invalid: [dryRun: Unsupported value: []string{"x"}: supported values: '
     '"All", force: Forbidden: may not be specified for non-apply patch]',
     [("FieldValueNotSupported", "dryRun"), ("FieldValueForbidden", "force")]),
    ("POST", {"dry_run": [], "field_manager": "m" * 129},
     'CreateOptions.meta.k8s.io "" is invalid: fieldManager: Too long: may not be more than 128 bytes',
     [("FieldValueTooLong", "fieldManager")]),
    ("PUT", {"dry_run": [], "field_validation": "strict"},
     'UpdateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "strict": supported values: "", '
     '"Ignore", "Strict", "Warn"', [("FieldValueNotSupported", "fieldValidation")]),
    ("POST", {"dry_run": [], "field_manager": "a\x01"},
     'CreateOptions.meta.k8s.io "" is invalid: fieldManager: Invalid value: "a\\x01": invalid character U+0001 '
     '(at position 1)', [("FieldValueInvalid", "fieldManager")]),
])
def test_refused_options_answer_like_kubernetes(method: str, kwargs: dict[str, Any], message: str,
                                                causes: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidOptionsError) as info:
        write_options(method, **kwargs)
    exc = info.value
    assert (exc.status, exc.reason, exc.message) == (422, "Invalid", message)
    assert exc.details is not None and exc.details["group"] == "meta.k8s.io"
    assert exc.details["kind"] == message.split(".", 1)[0]
    assert [(c["reason"], c["field"]) for c in exc.details["causes"]] == causes


def test_force_must_be_a_boolean() -> None:
    with pytest.raises(BadRequestError, match=re.escape('force: strconv.ParseBool: parsing "yes": invalid syntax')):
        write_options("PATCH", dry_run=[], patch_type=APPLY_PATCH, field_manager="m", force="yes")


@pytest.mark.parametrize(("body", "want"), [
    ({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]}, DeleteBody(["All"])),
    ({"propagationPolicy": "Background"}, DeleteBody()),
    ({"kind": "DeleteOptions", "dryRun": []}, DeleteBody([])),
    ({"preconditions": {"uid": "u1", "resourceVersion": None}}, DeleteBody(None, {"uid": "u1"})),
])
def test_delete_options_body(body: dict[str, Any], want: DeleteBody) -> None:
    assert read_delete_body(body) == want


@pytest.mark.parametrize("body", [[], {"kind": "Pod"}, {"dryRun": "All"}, {"dryRun": [1]},
                                  {"preconditions": {"name": "x"}}, {"preconditions": {"uid": 1}}])
def test_delete_options_body_refused(body: Any) -> None:
    with pytest.raises(BadRequestError):
        read_delete_body(body)


@pytest.mark.parametrize(("text", "want"), [
    ("All", '"All"'), ('a"b', '"a\\"b"'), ("tab\t", '"tab\\t"'), ("\x7f", '"\\x7f"'), ("é", '"é"'),
])
def test_go_quote(text: str, want: str) -> None:
    assert go_quote(text) == want
