"""JSON patch (RFC 6902) as kube-apiserver applies it (`ambient.api.patch.json_patch`): the RFC's operations,
all or nothing, 400 for a malformed patch and 422 for one that does not apply."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ambient.api.errors import BadRequestError, ValidationError
from ambient.api.patch import json_patch

DOC: dict[str, Any] = {"metadata": {"name": "p", "labels": {"a/b": "1", "t~x": "2"}, "resourceVersion": "7"},
       "spec": {"action": "ALLOW", "rules": [{"to": 1}, {"to": 2}]}}


@pytest.mark.parametrize(("ops", "want"), [
    ([], DOC),
    ([{"op": "replace", "path": "/spec/action", "value": "DENY"}], {**DOC, "spec": {**DOC["spec"], "action": "DENY"}}),
    ([{"op": "add", "path": "/spec/provider", "value": {"name": "x"}}],
     {**DOC, "spec": {**DOC["spec"], "provider": {"name": "x"}}}),
    ([{"op": "add", "path": "/spec/rules/0", "value": {"to": 0}}],
     {**DOC, "spec": {**DOC["spec"], "rules": [{"to": 0}, {"to": 1}, {"to": 2}]}}),
    ([{"op": "add", "path": "/spec/rules/-", "value": {"to": 3}}],
     {**DOC, "spec": {**DOC["spec"], "rules": [{"to": 1}, {"to": 2}, {"to": 3}]}}),
    ([{"op": "remove", "path": "/spec/rules/0"}], {**DOC, "spec": {**DOC["spec"], "rules": [{"to": 2}]}}),
    # ~1 is "/", ~0 is "~" (RFC 6901)
    ([{"op": "remove", "path": "/metadata/labels/a~1b"}, {"op": "remove", "path": "/metadata/labels/t~0x"}],
     {**DOC, "metadata": {**DOC["metadata"], "labels": {}}}),
    # kubectl's rewrite of managedFields when a client-side applied object is first applied server-side
    ([{"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
      {"op": "add", "path": "/metadata/managedFields", "value": []}],
     {**DOC, "metadata": {**DOC["metadata"], "managedFields": []}}),
    ([{"op": "move", "from": "/spec/rules/1", "path": "/spec/rules/0"}],
     {**DOC, "spec": {**DOC["spec"], "rules": [{"to": 2}, {"to": 1}]}}),
    ([{"op": "copy", "from": "/spec/action", "path": "/metadata/labels/action"}],
     {**DOC, "metadata": {**DOC["metadata"], "labels": {**DOC["metadata"]["labels"], "action": "ALLOW"}}}),
])
def test_operations(ops: list[dict[str, Any]], want: dict[str, Any]) -> None:
    before = copy.deepcopy(DOC)
    assert json_patch(DOC, ops) == want
    assert before == DOC  # the input is never modified


def test_replace_keeps_key_order() -> None:
    out = json_patch(DOC, [{"op": "replace", "path": "/metadata/name", "value": "q"}])
    assert list(out["metadata"]) == list(DOC["metadata"])


@pytest.mark.parametrize(("ops", "message"), [
    ([{"op": "replace", "path": "/spec/provider", "value": 1}],
     "replace operation does not apply: doc is missing path: /spec/provider"),
    ([{"op": "remove", "path": "/spec/rules/2"}],
     "remove operation does not apply: doc is missing path: /spec/rules/2"),
    ([{"op": "add", "path": "/nope/x", "value": 1}], "add operation does not apply: doc is missing path: /nope/x"),
    ([{"op": "test", "path": "/metadata/resourceVersion", "value": "6"}],
     "testing value /metadata/resourceVersion failed: test failed"),
    # all or nothing: the first operation applied, the second failed: nothing is returned
    ([{"op": "replace", "path": "/spec/action", "value": "DENY"}, {"op": "remove", "path": "/spec/x"}],
     "remove operation does not apply"),
])
def test_operations_that_do_not_apply_are_422(ops: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        json_patch(DOC, ops)
    assert info.value.status == 422 and message in info.value.message


@pytest.mark.parametrize("ops", [
    {"op": "add"}, [1], [{"op": "frobnicate", "path": "/x"}], [{"op": "add", "path": "/x"}],
    [{"op": "remove", "path": "x"}], [{"op": "move", "path": "/x"}],
])
def test_malformed_patches_are_400(ops: Any) -> None:
    with pytest.raises(BadRequestError):
        json_patch(DOC, ops)
