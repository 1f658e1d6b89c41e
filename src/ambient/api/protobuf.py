"""Kubernetes protobuf request bodies, for the few kinds kubectl's generators send that way: pure decoding.

kubectl's typed clients (`kubectl create namespace NAME`, `kubectl create serviceaccount NAME`) send
`application/vnd.kubernetes.protobuf`: the magic `k8s\\x00`, then a `runtime.Unknown` message (1: TypeMeta
{1: apiVersion, 2: kind}, 2: raw object, 3: contentEncoding, 4: contentType), the raw object being the kind's
generated message. Only what those commands set is decoded into the API's JSON shape: ObjectMeta's name,
generateName, namespace, labels and annotations, ServiceAccount's automountServiceAccountToken. Any other
kind is refused (`UnsupportedKindError`), so nothing is silently half-decoded.
"""

from __future__ import annotations

from typing import Any

from ambient.api.errors import ValidationError

MAGIC = b"k8s\x00"
Obj = dict[str, Any]


class ProtobufError(ValidationError):
    """The body is not a Kubernetes protobuf message this server decodes."""


class UnsupportedKindError(ProtobufError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one message: varints as ints, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated protobuf field")
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire}")
    return out


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode("utf-8")


def _string_map(entries: list[int | bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, bytes):
            kv = dict(fields(entry))
            out[_text(kv.get(1, b""))] = _text(kv.get(2, b""))
    return out


def object_meta(data: bytes) -> Obj:
    meta: Obj = {}
    labels: list[int | bytes] = []
    annotations: list[int | bytes] = []
    for number, value in fields(data):
        if number == 1:
            meta["name"] = _text(value)
        elif number == 2:
            meta["generateName"] = _text(value)
        elif number == 3:
            meta["namespace"] = _text(value)
        elif number == 11:
            labels.append(value)
        elif number == 12:
            annotations.append(value)
    if labels:
        meta["labels"] = _string_map(labels)
    if annotations:
        meta["annotations"] = _string_map(annotations)
    return {k: v for k, v in meta.items() if v != ""}


def decode(body: bytes) -> Obj:
    """A protobuf request body as the API's JSON object; raises ProtobufError."""
    if not body.startswith(MAGIC):
        raise ProtobufError("protobuf body without the k8s magic prefix")
    unknown = dict(fields(body[len(MAGIC):]))
    head = unknown.get(1, b"")
    type_meta = dict(fields(head if isinstance(head, bytes) else b""))
    api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
    raw = unknown.get(2, b"")
    if not isinstance(raw, bytes):
        raise ProtobufError("protobuf body without an object")
    if (api_version, kind) not in (("v1", "Namespace"), ("v1", "ServiceAccount")):
        raise UnsupportedKindError(
            f"protobuf bodies of kind {kind or '?'} are not supported, only JSON (`kubectl create <kind> NAME` "
            "sends protobuf: use `kubectl apply -f` with a manifest instead)"
        )
    obj: Obj = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    for number, value in fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = object_meta(value)
        elif kind == "ServiceAccount" and number == 4 and isinstance(value, int):
            obj["automountServiceAccountToken"] = bool(value)
    return obj
