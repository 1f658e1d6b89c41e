"""The options of a write request (`dryRun`, `fieldManager`, `force`), read and checked as kube-apiserver does:
pure functions, no I/O.

Kubernetes decodes them into CreateOptions / UpdateOptions / PatchOptions / DeleteOptions (a DELETE takes
them from its body, a `DeleteOptions` object, when it has one, else from the query) and refuses a bad value
with HTTP 422, reason Invalid, a message `PatchOptions.meta.k8s.io "" is invalid: dryRun: Unsupported
value: []string{"Al"}: supported values: "All"` and one cause per field. Invariants:
- `dryRun` accepts only `All` (repeatable); any other value, the empty one included, is refused, never
  ignored: a write the client meant as a dry run must not be stored.
- `force` is an apply-patch option only; an apply patch needs a `fieldManager`; a field manager is at most
  128 bytes of printable characters; `fieldValidation` is "", Ignore, Strict or Warn (case matters).
- Messages keep Kubernetes' (Go) spelling of values: `%q` strings and `[]string{...}` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ambient.api.errors import BadRequestError, ValidationError

DRY_RUN_ALL = "All"
FIELD_MANAGER_MAX_BYTES = 128
FIELD_VALIDATION_VALUES = ("", "Ignore", "Strict", "Warn")  # as Kubernetes lists them (sorted)
APPLY_PATCH = "application/apply-patch+yaml"
# The options object Kubernetes decodes for each write verb (named in its refusal).
OPTIONS_KIND = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions",
                "DELETE": "DeleteOptions"}
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}


class InvalidOptionsError(ValidationError):
    """Bad request options: HTTP 422, reason Invalid, with Kubernetes' `details` (group, kind, causes)."""

    def __init__(self, kind: str, causes: list[FieldError]) -> None:
        messages = list(dict.fromkeys(c.text() for c in causes))
        listed = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
        super().__init__(f'{kind}.meta.k8s.io "" is invalid: {listed}')
        self.details = {"group": "meta.k8s.io", "kind": kind,
                        "causes": [{"reason": c.reason, "message": c.body(), "field": c.field} for c in causes]}


@dataclass(frozen=True)
class FieldError:
    """One field error as Kubernetes' `field.Error`: `dryRun: Unsupported value: ...: supported values: ...`."""

    field: str
    type: str  # "Unsupported value", "Required value", "Forbidden", "Too long", "Invalid value"
    reason: str  # the Status cause reason: FieldValueNotSupported, FieldValueRequired...
    value: str | None  # the bad value as Go prints it; None: not shown (Required, Forbidden, Too long)
    detail: str

    def body(self) -> str:
        text = self.type if self.value is None else f"{self.type}: {self.value}"
        return f"{text}: {self.detail}" if self.detail else text

    def text(self) -> str:
        return f"{self.field}: {self.body()}"


@dataclass(frozen=True)
class WriteOptions:
    dry_run: bool = False
    field_manager: str = ""
    force: bool = False


def go_quote(text: str) -> str:
    """`text` as Go's `%q` prints it (control characters escaped, printable Unicode kept)."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def parse_bool(name: str, text: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it; anything else is a 400 BadRequest."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise BadRequestError(f"{name}: strconv.ParseBool: parsing {go_quote(text[:64])}: invalid syntax")


def check_dry_run(values: list[str]) -> list[FieldError]:
    """Every `dryRun` value must be `All`."""
    if all(v == DRY_RUN_ALL for v in values):
        return []
    listed = "[]string{" + ", ".join(go_quote(v[:64]) for v in values[:8]) + "}"
    return [FieldError("dryRun", "Unsupported value", "FieldValueNotSupported", listed,
                       f"supported values: {go_quote(DRY_RUN_ALL)}")]


def check_field_manager(manager: str) -> list[FieldError]:
    if len(manager.encode()) > FIELD_MANAGER_MAX_BYTES:
        return [FieldError("fieldManager", "Too long", "FieldValueTooLong", None,
                           f"may not be more than {FIELD_MANAGER_MAX_BYTES} bytes")]
    for index, ch in enumerate(manager):
        if not ch.isprintable() and ch != " ":
            return [FieldError("fieldManager", "Invalid value", "FieldValueInvalid", go_quote(manager),
                               f"invalid character U+{ord(ch):04X} (at position {index})")]
    return []


def check_field_validation(value: str | None) -> list[FieldError]:
    if value is None or value in FIELD_VALIDATION_VALUES:
        return []
    listed = ", ".join(go_quote(v) for v in FIELD_VALIDATION_VALUES)
    return [FieldError("fieldValidation", "Unsupported value", "FieldValueNotSupported", go_quote(value[:64]),
                       f"supported values: {listed}")]


def write_options(method: str, *, dry_run: list[str], field_manager: str | None = None,
                  force: str | None = None, patch_type: str | None = None,
                  field_validation: str | None = None) -> WriteOptions:
    """The checked options of a POST / PUT / PATCH / DELETE (`patch_type`: a PATCH's content type);
    raises InvalidOptionsError (422) naming every bad field, or a 400 for a `force` that is not a boolean."""
    kind = OPTIONS_KIND[method]
    errors = check_dry_run(dry_run)
    forced = parse_bool("force", force) if force is not None else False
    manager = field_manager or ""
    if method == "PATCH":
        if patch_type != APPLY_PATCH:
            if force is not None:
                errors.append(FieldError("force", "Forbidden", "FieldValueForbidden", None,
                                         "may not be specified for non-apply patch"))
        elif not manager:
            errors.append(FieldError("fieldManager", "Required value", "FieldValueRequired", None,
                                     "is required for apply patch"))
    if method != "DELETE":
        errors += check_field_manager(manager)
        errors += check_field_validation(field_validation)
    if errors:
        raise InvalidOptionsError(kind, errors)
    return WriteOptions(dry_run=bool(dry_run), field_manager=manager, force=forced)


@dataclass(frozen=True)
class DeleteBody:
    """What a DELETE's DeleteOptions body asks: `dry_run` (None: the body gives none) and `preconditions`
    (`uid`, `resourceVersion`: the object must still be this one, else 409 Conflict)."""

    dry_run: list[str] | None = None
    preconditions: dict[str, str] | None = None


def read_delete_body(body: Any) -> DeleteBody:
    """A DELETE's body (a DeleteOptions object); one that is not a DeleteOptions object is refused (400), as
    Kubernetes refuses it."""
    if not isinstance(body, dict):
        raise _bad_delete_body(f"expected a DeleteOptions object, got {type(body).__name__}")
    kind = body.get("kind")
    if kind not in (None, "", "DeleteOptions"):
        raise _bad_delete_body(f'the body is a {str(kind)[:64]}, not DeleteOptions')
    values = body.get("dryRun")
    if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
        raise _bad_delete_body("dryRun: expected a list of strings")
    pre = body.get("preconditions")
    if pre is not None and (not isinstance(pre, dict) or not all(
            k in ("uid", "resourceVersion") and isinstance(v, str | None) for k, v in pre.items())):
        raise _bad_delete_body("preconditions: expected an object with uid and/or resourceVersion strings")
    preconditions = {k: v for k, v in (pre or {}).items() if v is not None} or None
    return DeleteBody(values, preconditions)


def _bad_delete_body(what: str) -> BadRequestError:
    return BadRequestError(f"decoding the DeleteOptions body: {what}")
