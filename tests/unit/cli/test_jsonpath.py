"""kubectl JSONPath templates: the examples of kubectl's JSONPath reference page, evaluated on its sample."""

from __future__ import annotations

from typing import Any

import pytest

from ambient.cli import jsonpath
from ambient.cli.errors import UsageError

# The sample document of https://kubernetes.io/docs/reference/kubectl/jsonpath/
SAMPLE: dict[str, Any] = {
    "kind": "List",
    "items": [
        {"kind": "None", "metadata": {"name": "127.0.0.1", "labels": {"kubernetes.io/hostname": "127.0.0.1"}},
         "status": {"capacity": {"cpu": "4"},
                    "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.1"}]}},
        {"kind": "None", "metadata": {"name": "127.0.0.2"},
         "status": {"capacity": {"cpu": "8"},
                    "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.2"},
                                  {"type": "another", "address": "127.0.0.3"}]}},
    ],
    "users": [
        {"name": "myself", "user": {}},
        {"name": "e2e", "user": {"username": "admin", "password": "secret"}},
    ],
}


@pytest.mark.parametrize(("template", "expected"), [
    ("{.kind}", "List"),
    ("{['kind']}", "List"),
    ("{$.kind}", "List"),
    ("{..name}", "127.0.0.1 127.0.0.2 myself e2e"),
    ("{.items[*].metadata.name}", "127.0.0.1 127.0.0.2"),
    ("{.items[0].metadata.name}", "127.0.0.1"),
    ("{.items[-1:].metadata.name}", "127.0.0.2"),
    ("{.users[0].name}", "myself"),
    ("{.users[?(@.name==\"e2e\")].user.password}", "secret"),
    ("{.users[?(@.user.username)].name}", "e2e"),
    ("{.items[0].metadata.labels.kubernetes\\.io/hostname}", "127.0.0.1"),
    ("{.items[0].metadata.labels['kubernetes\\.io/hostname']}", "127.0.0.1"),
    ("{range .items[*]}[{.metadata.name}, {.status.capacity}] {end}",
     '[127.0.0.1, {"cpu":"4"}] [127.0.0.2, {"cpu":"8"}] '),
    ('{range .items[*]}{.metadata.name}{"\\t"}{.status.addresses[?(@.type=="LegacyHostIP")].address}{"\\n"}{end}',
     "127.0.0.1\t127.0.0.1\n127.0.0.2\t127.0.0.2\n"),
    ("{.items[1].status.addresses[*].address}", "127.0.0.2 127.0.0.3"),
    ("{.nosuch.field}", ""),                       # missing keys print nothing (kubectl's default)
    ("name: {.items[0].metadata.name}!", "name: 127.0.0.1!"),
])
def test_kubectl_reference_examples(template: str, expected: str) -> None:
    assert jsonpath.render(template, SAMPLE) == expected


def test_scalars_print_as_kubectl() -> None:
    doc = {"a": True, "b": 3, "c": None, "d": [1, "x"]}
    assert jsonpath.render("{.a} {.b} {.c}|{.d}", doc) == 'true 3 |[1,"x"]'


@pytest.mark.parametrize("template", ["{.items[0}", "{range .items[*]}{.x}", "{end}", "{.items[?(@.a ~ 1)]}",
                                      "{}", "{.a",
                                      "{.items[*]['metadata.name', 'status.capacity']}"])
def test_malformed_templates_are_usage_errors(template: str) -> None:
    with pytest.raises(UsageError, match="error parsing jsonpath"):
        jsonpath.render(template, SAMPLE)
