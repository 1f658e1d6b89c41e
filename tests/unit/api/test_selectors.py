"""Label and field selector parsing and matching (pure)."""

from __future__ import annotations

import pytest

from ambient.api.errors import ValidationError
from ambient.api.selectors import compile_selectors, matches_labels, parse_label_selector


def _obj(labels: dict[str, str] | None = None, **extra: object) -> dict[str, object]:
    return {"metadata": {"name": "web", "namespace": "default", "labels": labels or {}}, **extra}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web", {}, False),
        ("app!=web", {"app": "db"}, True),
        ("app!=web", {}, True),  # != also matches objects without the label
        ("app!=web", {"app": "web"}, False),
        ("env in (prod, staging)", {"env": "staging"}, True),
        ("env in (prod,staging)", {"env": "dev"}, False),
        ("env in (prod)", {}, False),
        ("env notin (prod)", {}, True),
        ("env notin (prod,dev)", {"env": "dev"}, False),
        ("tier", {"tier": ""}, True),
        ("tier", {}, False),
        ("!tier", {}, True),
        ("!tier", {"tier": "x"}, False),
        ("a=b,c!=d,e in (x,y),f notin (z),g,!h", {"a": "b", "c": "x", "e": "y", "f": "q", "g": "1"}, True),
        ("a=b,c!=d,e in (x,y),f notin (z),g,!h", {"a": "b", "e": "y", "g": "1", "h": "1"}, False),
        ("istio.io/dataplane-mode=ambient", {"istio.io/dataplane-mode": "ambient"}, True),
        ("", {"any": "thing"}, True),
    ],
)
def test_label_selector_matching(selector: str, labels: dict[str, str], expected: bool) -> None:
    pred = compile_selectors(selector, None)
    assert (pred is None and selector == "") or pred is not None
    assert (pred(_obj(labels)) if pred else True) is expected


@pytest.mark.parametrize("bad", ["app=(web)", "env in ()", "env in (a", "a,,b", "=x", "a b"])
def test_invalid_label_selectors_are_rejected_with_the_term(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_label_selector(bad)
    assert "selector" in err.value.message


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=web", True),
        ("metadata.name==web", True),
        ("metadata.name!=web", False),
        ("metadata.namespace=default", True),
        ("metadata.namespace=other", False),
        ("spec.nodeName=node-1", True),
        ("spec.nodeName=node-2", False),
        ("status.phase=Running", True),
        ("status.phase!=Pending,spec.nodeName=node-1", True),
        ("status.podIP=", True),  # missing field compares as the empty string
    ],
)
def test_field_selectors(selector: str, expected: bool) -> None:
    pred = compile_selectors(None, selector)
    assert pred is not None
    assert pred(_obj(spec={"nodeName": "node-1"}, status={"phase": "Running"})) is expected


def test_invalid_field_selector() -> None:
    with pytest.raises(ValidationError, match="expected FIELD=VALUE"):
        compile_selectors(None, "metadata.name")
    with pytest.raises(ValidationError, match="not a field path"):
        compile_selectors(None, "metadata..name=x")


def test_label_and_field_selectors_combine() -> None:
    pred = compile_selectors("app=web", "metadata.name=web")
    assert pred is not None
    assert pred(_obj({"app": "web"}))
    assert not pred(_obj({"app": "db"}))


def test_matches_labels_equality_semantics() -> None:
    assert matches_labels({}, {"a": "b"})
    assert matches_labels({"a": "b"}, {"a": "b", "c": "d"})
    assert not matches_labels({"a": "b"}, None)
