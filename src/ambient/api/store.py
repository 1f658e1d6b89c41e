"""The object store of the cluster API: Kubernetes-shaped objects persisted in an embedded SQLite database.

Invariants:
- One global, strictly increasing resourceVersion (`meta.rv`). Every write (create, update, status update,
  patch, delete, including each object of a batch or of a namespace cascade) takes the next version, and
  writes exactly one row to the `events` change log with that version.
- One SQLite transaction per API call (`apply_many` and namespace deletion included): a crash leaves either
  all of a call's writes or none. WAL journal with synchronous=FULL: a commit is on disk when the call
  returns, so a `kill -9` or a power cut never loses an acknowledged write. Writers take the database
  write lock first (`BEGIN IMMEDIATE`), so even a second process writing the same file is serialised.
- The change log keeps the last `max_events` versions; `meta.compacted` is the newest version removed, and
  a watch from an older version gets `GoneError` (HTTP 410: re-list, then watch again).
- Objects are stored as compact JSON text keyed by (kind, namespace, name); cluster-scoped kinds use
  namespace "". Every object written (not a status write) is validated, then defaulted as kube-apiserver
  defaults it (`ambient.api.defaults`: only absent fields). No object is stored larger than
  `max_object_bytes` (1.5 MiB, etcd's limit), status included. Server-owned fields (uid,
  creationTimestamp, resourceVersion, generation) are set here only.
- Events (`ambient.api.events`) are bounded: creating one removes, in the same transaction, the least recently
  written Events past `event_limits.per_object` about the same involved object and past `event_limits.total`
  overall; `expire_events` removes those last seen more than `event_limits.ttl` ago (the API server calls it
  periodically). Each removal is an ordinary DELETED change, so watchers see Events go. Events have no
  metadata.generation.
- A namespaced object can only be created in an existing Namespace; deleting a Namespace deletes every
  object in it in the same transaction.
- Dry run (`dry_run=True` on every write, Kubernetes' `?dryRun=All`): the call runs exactly as a real one
  (validation, defaulting, namespace and conflict checks, size limit, generation) inside its transaction,
  which is then rolled back: nothing is stored, no version is taken, no change-log row is kept. The objects
  returned carry the resourceVersion they had (none for a create), as Kubernetes' dry run answers.

The class is synchronous and not meant for concurrent use from several threads at once (the API server
drives it from one worker thread); a lock makes accidental concurrent use safe rather than fast.
"""

from __future__ import annotations

import builtins
import copy
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ambient.api.apply import record_update
from ambient.api.defaults import fill_defaults
from ambient.api.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    TooLargeError,
    ValidationError,
)
from ambient.api.events import EventLimits, last_seen
from ambient.api.kinds import KindInfo, kind_for_manifest, resolve_kind
from ambient.api.limits import MAX_OBJECT_BYTES
from ambient.api.patch import merge_patch
from ambient.api.selectors import compile_selectors
from ambient.api.validation.schema import find_unknown_fields, strict_error

Obj = dict[str, Any]

DB_FILENAME = "apiserver.db"
# Namespaces that exist from the start; the first two can never be deleted (as in Kubernetes).
INITIAL_NAMESPACES = ("default", "kube-system", "istio-system")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system"})
DEFAULT_MAX_EVENTS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_namespace ON objects (namespace);
CREATE TABLE IF NOT EXISTS events (
    rv INTEGER PRIMARY KEY, type TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL,
    data TEXT NOT NULL, prev TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', 0), ('compacted', 0), ('schema', 1);
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


LAST_APPLIED = "ambient.io/last-applied"


def _applied_record(obj: Obj) -> str:
    """What an apply remembers (annotation LAST_APPLIED): the label and annotation keys its manifest set,
    so the next apply can remove the ones its manifest dropped. Compact, deterministic JSON."""
    meta = obj.get("metadata") or {}
    keys = {f: sorted(k for k in (meta.get(f) or {}) if k != LAST_APPLIED) for f in ("labels", "annotations")}
    return json.dumps(keys, sort_keys=True, separators=(",", ":"))


def _previously_applied(meta: Obj) -> dict[str, set[str]]:
    """Keys the last apply set; none for an object never applied (or a record that does not parse)."""
    raw = (meta.get("annotations") or {}).get(LAST_APPLIED)
    try:
        record = json.loads(raw) if isinstance(raw, str) else {}
        return {f: {str(k) for k in record.get(f, [])} for f in ("labels", "annotations")}
    except (ValueError, AttributeError, TypeError):
        return {"labels": set(), "annotations": set()}


def _default_validate(obj: Obj) -> Obj:
    # Imported lazily: validation.py is owned by another module and imports nothing from here.
    from ambient.api.validation import validate_object

    return validate_object(obj)


def _describe(info: KindInfo, name: str, namespace: str) -> str:
    return f'{info.resource} "{name}"' + (f' in namespace "{namespace}"' if info.namespaced else "")


def _spec_part(obj: Obj) -> Obj:
    """Everything whose change bumps metadata.generation (all but metadata and status)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass(frozen=True)
class ChangeEvent:
    """One row of the change log. `data` is the object's JSON after the change; `prev` (MODIFIED only)
    the JSON before it, so that selector-filtered watches can turn "stopped matching" into DELETED."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    data: str
    prev: str | None


class _Tx:
    """The state of one write transaction: hands out consecutive resource versions."""

    def __init__(self, db: sqlite3.Connection, dry_run: bool = False,
                 manager: tuple[str, str | None] | None = None) -> None:
        self.db = db
        self.dry_run = dry_run
        self.manager = manager  # (field manager, subresource) whose writes managedFields record, if any
        self.rv = int(db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()[0])
        self.start_rv = self.rv

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv


class Store:
    """SQLite-backed object store (see module docstring for the invariants)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        validate: Callable[[Obj], Obj] | None = None,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        event_limits: EventLimits | None = None,
    ) -> None:
        self.path = Path(path)
        self.event_limits = event_limits or EventLimits()
        if self.path.is_dir():
            self.path = self.path / DB_FILENAME
        self.max_events = max_events
        self.max_object_bytes = max_object_bytes
        self._validate = validate or _default_validate
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a batch is exactly one transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL (not NORMAL) so that an acknowledged write survives a power cut as well as a process
            # crash; it costs one fsync per transaction, which batching (apply_many) amortises.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._bootstrap()
        except sqlite3.Error as exc:
            raise ApiError(
                f"cannot open the object store {self.path}: {exc}",
                hint="check the state directory (permissions, free space); a corrupt file can be inspected "
                "with `sqlite3 FILE 'PRAGMA integrity_check'`",
            ) from exc

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self, dry_run: bool = False, manager: tuple[str, str | None] | None = None) -> Iterator[_Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                tx = _Tx(self._db, dry_run, manager)
                yield tx
                if dry_run:
                    # Everything the call wrote (objects, change log) is discarded; the version is not taken.
                    self._db.execute("ROLLBACK")
                    return
                if tx.rv != tx.start_rv:
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'rv'", (tx.rv,))
                    self._compact(tx.rv)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # A read transaction gives one consistent snapshot (objects + meta.rv) even if another process
        # writes the database concurrently.
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _compact(self, rv: int) -> None:
        compacted = int(self._db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0])
        # Compact in steps of ~10% so that the DELETE is not run on every write.
        if rv - compacted > self.max_events + max(1, self.max_events // 10):
            new_compacted = rv - self.max_events
            self._db.execute("DELETE FROM events WHERE rv <= ?", (new_compacted,))
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'compacted'", (new_compacted,))

    def _bootstrap(self) -> None:
        with self._write() as tx:
            done = tx.db.execute("SELECT value FROM meta WHERE key = 'bootstrapped'").fetchone()
            if done:
                return
            for ns in INITIAL_NAMESPACES:
                if self._load(tx.db, resolve_kind("Namespace"), "", ns) is None:
                    self._create(tx, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            tx.db.execute("INSERT INTO meta (key, value) VALUES ('bootstrapped', 1)")

    def _load(self, db: sqlite3.Connection, info: KindInfo, namespace: str, name: str) -> Obj | None:
        row = db.execute(
            "SELECT data FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (info.kind, namespace, name),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _put(self, tx: _Tx, info: KindInfo, obj: Obj, event: str, prev: Obj | None = None) -> Obj:
        rv = tx.next_rv()
        meta = obj["metadata"]
        meta["resourceVersion"] = str(rv)
        data = _dumps(obj)
        ns = meta.get("namespace", "") if info.namespaced else ""
        if len(data) * 4 > self.max_object_bytes and len(size := data.encode()) > self.max_object_bytes:
            raise TooLargeError(
                f"{_describe(info, meta['name'], ns)}: request is too large: the object is {len(size)} bytes "
                f"stored, the limit is {self.max_object_bytes}",
                hint="keep large data out of objects (the API server's --max-object-bytes sets the limit)",
            )
        tx.db.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, rv, data) VALUES (?, ?, ?, ?, ?)",
            (info.kind, ns, meta["name"], rv, data),
        )
        tx.db.execute(
            "INSERT INTO events (rv, type, kind, namespace, data, prev) VALUES (?, ?, ?, ?, ?, ?)",
            (rv, event, info.kind, ns, data, _dumps(prev) if prev is not None else None),
        )
        if tx.dry_run:  # answered with the version it has (a new object has none), as Kubernetes' dry run
            if prev is None:
                del meta["resourceVersion"]
            else:
                meta["resourceVersion"] = prev["metadata"]["resourceVersion"]
        return obj

    def _remove(self, tx: _Tx, info: KindInfo, obj: Obj) -> Obj:
        rv = tx.next_rv()
        meta = obj["metadata"]
        was = meta.get("resourceVersion")
        # The DELETED event carries the object as it was, stamped with the version of its deletion.
        meta["resourceVersion"] = str(rv)
        ns = meta.get("namespace", "") if info.namespaced else ""
        tx.db.execute(
            "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", (info.kind, ns, meta["name"])
        )
        tx.db.execute(
            "INSERT INTO events (rv, type, kind, namespace, data, prev) VALUES (?, 'DELETED', ?, ?, ?, NULL)",
            (rv, info.kind, ns, _dumps(obj)),
        )
        if tx.dry_run:
            meta["resourceVersion"] = was
        return obj

    def _checked(self, obj: Any) -> tuple[KindInfo, Obj]:
        if not isinstance(obj, dict):
            raise ValidationError(f"expected an object (mapping), got {type(obj).__name__}")
        valid = self._validate(obj)
        info = kind_for_manifest(valid.get("apiVersion"), valid.get("kind"))
        # Kubernetes' defaults, on the validated copy (`ambient.api.defaults`): every write of spec or
        # metadata comes through here, dry runs included, so what is stored and answered is defaulted.
        return info, fill_defaults(valid, info.kind)

    @staticmethod
    def _key(info: KindInfo, obj: Obj) -> tuple[str, str]:
        meta = obj["metadata"]
        return (meta.get("namespace") or "default") if info.namespaced else "", meta["name"]

    @staticmethod
    def _ns_arg(info: KindInfo, namespace: str | None) -> str:
        if not info.namespaced:
            return ""
        return namespace or "default"

    def _require(self, db: sqlite3.Connection, info: KindInfo, namespace: str, name: str) -> Obj:
        current = self._load(db, info, namespace, name)
        if current is None:
            raise NotFoundError(f"{_describe(info, name, namespace)} not found")
        return current

    @staticmethod
    def _check_rv(info: KindInfo, obj: Obj, current: Obj) -> None:
        given = (obj.get("metadata") or {}).get("resourceVersion")
        if given not in (None, "") and str(given) != current["metadata"]["resourceVersion"]:
            name = current["metadata"]["name"]
            raise ConflictError(
                f'operation cannot be fulfilled on {info.resource} "{name}": the object has been modified '
                f"(resourceVersion {given} is stale, current is {current['metadata']['resourceVersion']})",
                hint="read the object again, re-apply your change to it and retry",
            )

    # ------------------------------------------------------------------ writes (inside a transaction)

    def _create(self, tx: _Tx, obj: Obj, info: KindInfo | None = None) -> Obj:
        """Create `obj`; pass `info` when `obj` is already validated (its kind) to skip validating twice."""
        if info is None:
            info, obj = self._checked(obj)
        ns, name = self._key(info, obj)
        if info.namespaced and self._load(tx.db, resolve_kind("Namespace"), "", ns) is None:
            raise NotFoundError(
                f'namespaces "{ns}" not found',
                hint=f"create it first: `ambient create namespace {ns}` or apply a Namespace manifest",
            )
        if self._load(tx.db, info, ns, name) is not None:
            raise AlreadyExistsError(
                f"{_describe(info, name, ns)} already exists",
                hint="use `ambient apply` to change it, or delete it first",
            )
        meta = obj["metadata"]
        for server_owned in ("resourceVersion", "deletionTimestamp"):
            meta.pop(server_owned, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if info.kind != "Event":  # Events have no spec, and no generation in Kubernetes
            meta["generation"] = 1
        if info.kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
        if tx.manager is not None:
            record_update(None, obj, tx.manager[0], info.api_version, tx.manager[1], now=meta["creationTimestamp"])
        created = self._put(tx, info, obj, "ADDED")
        if info.kind == "Event":
            self._trim_events(tx, created)
        return created

    def _trim_events(self, tx: _Tx, event: Obj) -> None:
        """Keep at most `event_limits.per_object` Events about the new one's involved object and
        `event_limits.total` overall: the least recently written go (in the same transaction)."""
        limits = self.event_limits
        ref = event.get("involvedObject") if isinstance(event.get("involvedObject"), dict) else {}
        ref = ref or {}
        ns = event["metadata"].get("namespace") or "default"
        rows = tx.db.execute(
            "SELECT data FROM objects WHERE kind = 'Event' AND namespace = ? "
            "AND coalesce(json_extract(data, '$.involvedObject.uid'), '') = ? "
            "AND coalesce(json_extract(data, '$.involvedObject.kind'), '') = ? "
            "AND coalesce(json_extract(data, '$.involvedObject.name'), '') = ? ORDER BY rv",
            (ns, str(ref.get("uid") or ""), str(ref.get("kind") or ""), str(ref.get("name") or "")),
        ).fetchall()
        info = resolve_kind("Event")
        for (data,) in rows[: max(0, len(rows) - limits.per_object)]:
            self._remove(tx, info, json.loads(data))
        total = int(tx.db.execute("SELECT count(*) FROM objects WHERE kind = 'Event'").fetchone()[0])
        if total > limits.total:
            oldest = tx.db.execute("SELECT data FROM objects WHERE kind = 'Event' ORDER BY rv LIMIT ?",
                                   (total - limits.total,)).fetchall()
            for (data,) in oldest:
                self._remove(tx, info, json.loads(data))

    def _replace(self, tx: _Tx, info: KindInfo, current: Obj, new: Obj) -> Obj:
        """Write `new` over `current`, keeping server-owned metadata; a no-op change writes nothing."""
        if tx.manager is not None:
            record_update(current, new, tx.manager[0], info.api_version, tx.manager[1])
        meta, old_meta = new["metadata"], current["metadata"]
        for owned in ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp"):
            if owned in old_meta:
                meta[owned] = old_meta[owned]
            else:
                meta.pop(owned, None)
        if _spec_part(new) != _spec_part(current) and info.kind != "Event":
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if new == current:
            return current
        return self._put(tx, info, new, "MODIFIED", prev=current)

    def _update(self, tx: _Tx, obj: Obj) -> Obj:
        info, valid = self._checked(obj)
        ns, name = self._key(info, valid)
        current = self._require(tx.db, info, ns, name)
        self._check_rv(info, obj, current)
        # The main resource never changes status (status subresource semantics, as in Kubernetes).
        valid.pop("status", None)
        if "status" in current:
            valid["status"] = current["status"]
        return self._replace(tx, info, current, valid)

    def _update_status(self, tx: _Tx, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise ValidationError(f"expected an object (mapping), got {type(obj).__name__}")
        info = kind_for_manifest(obj.get("apiVersion"), obj.get("kind"))
        meta = obj.get("metadata") or {}
        if not meta.get("name"):
            raise ValidationError("metadata.name: required")
        ns = self._ns_arg(info, meta.get("namespace"))
        current = self._require(tx.db, info, ns, meta["name"])
        self._check_rv(info, obj, current)
        status = obj.get("status")
        if status is not None and not isinstance(status, dict):
            raise ValidationError(f"status: expected an object, got {type(status).__name__}")
        new = copy.deepcopy(current)
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = copy.deepcopy(status)
        return self._replace(tx, info, current, new)

    def _patch(self, tx: _Tx, info: KindInfo, namespace: str, name: str, patch: Any, status: bool) -> Obj:
        if not isinstance(patch, dict):
            raise ValidationError(f"a merge patch must be a JSON object, got {type(patch).__name__}")
        current = self._require(tx.db, info, namespace, name)
        pmeta = patch.get("metadata") or {}
        for field, want in (("name", name), ("namespace", namespace or None)):
            if pmeta.get(field) not in (None, want):
                raise ValidationError(f"metadata.{field}: cannot be changed by a patch (is {want!r})")
        self._check_rv(info, patch, current)
        if not status:
            # Unknown fields in the patch are refused (the API server has already removed them for Warn and
            # Ignore requests); the stored object has none, except one written before strict validation.
            unknown = find_unknown_fields(patch, info.kind)
            if unknown:
                raise strict_error(unknown, f"{info.display_kind} {namespace + '/' if namespace else ''}{name}")
        merged = merge_patch(current, patch)
        if status:
            new = copy.deepcopy(current)
            if merged.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = merged["status"]
            return self._replace(tx, info, current, new)
        merged["kind"], merged["apiVersion"] = info.wire_kind, info.api_version
        find_unknown_fields(merged, info.kind, prune=True)  # what an older version stored unchecked
        _, valid = self._checked(merged)
        valid.pop("status", None)
        if "status" in current:
            valid["status"] = current["status"]
        return self._replace(tx, info, current, valid)

    def _delete(self, tx: _Tx, info: KindInfo, namespace: str, name: str,
                preconditions: dict[str, str] | None = None) -> Obj:
        current = self._require(tx.db, info, namespace, name)
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = (preconditions or {}).get(field)
            if want is not None and want != current["metadata"].get(field):
                raise ConflictError(
                    f'Operation cannot be fulfilled on {info.resource} "{name}": Precondition failed: {label} in '
                    f"precondition: {want}, {label} in object meta: {current['metadata'].get(field)}",
                    hint="the object was replaced or changed since it was read: read it again",
                )
        if info.kind == "Namespace":
            if name in PROTECTED_NAMESPACES:
                raise ValidationError(f'namespace "{name}" cannot be deleted', hint="it is a system namespace")
            rows = tx.db.execute(
                "SELECT kind, data FROM objects WHERE namespace = ? ORDER BY kind, name", (name,)
            ).fetchall()
            for kind, data in rows:
                self._remove(tx, resolve_kind(kind), json.loads(data))
        return self._remove(tx, info, current)

    def _apply(self, tx: _Tx, obj: Obj) -> tuple[Obj, str]:
        info, valid = self._checked(obj)
        ns, name = self._key(info, valid)
        applied = _applied_record(valid)
        current = self._load(tx.db, info, ns, name)
        if current is None:
            valid["metadata"].setdefault("annotations", {})[LAST_APPLIED] = applied
            return self._create(tx, valid, info), "created"
        # Declarative update: the manifest owns everything but status and server-owned metadata. Labels and
        # annotations are a three-way merge, like kubectl's client-side apply: keys the previous apply set
        # and this manifest no longer has are removed; keys added by others (controllers, `ambient label`)
        # survive; the manifest's own values win.
        new: Obj = {k: v for k, v in valid.items() if k not in ("metadata", "status")}
        meta = copy.deepcopy(current["metadata"])
        previous = _previously_applied(meta)
        for field in ("labels", "annotations"):
            wanted = valid["metadata"].get(field) or {}
            kept = {k: v for k, v in (meta.get(field) or {}).items() if k not in previous[field] or k in wanted}
            merged = {**kept, **wanted}
            if field == "annotations":
                merged[LAST_APPLIED] = applied
            if merged or field in meta:
                meta[field] = merged
        for field, value in valid["metadata"].items():
            if field not in ("labels", "annotations", "uid", "creationTimestamp", "resourceVersion", "generation"):
                meta[field] = value
        new["metadata"] = meta
        if "status" in current:
            new["status"] = current["status"]
        result = self._replace(tx, info, current, new)
        return result, ("unchanged" if result is current else "configured")

    # ------------------------------------------------------------------ public API

    # Every write takes `dry_run`: run it whole, then roll it back (see the module docstring).

    # `manager`: the field manager of a create/update/patch, recorded in managedFields as Kubernetes records
    # an `Update` (`ambient.api.apply.record_update`); None records nothing (the cluster's own components).

    def create(self, obj: Obj, *, dry_run: bool = False, manager: str | None = None) -> Obj:
        with self._write(dry_run, (manager, None) if manager else None) as tx:
            return self._create(tx, obj)

    def update(self, obj: Obj, *, dry_run: bool = False, manager: str | None = None) -> Obj:
        """Replace spec/metadata; `metadata.resourceVersion`, when set, must be current (else ConflictError)."""
        with self._write(dry_run, (manager, None) if manager else None) as tx:
            return self._update(tx, obj)

    def update_status(self, obj: Obj, *, dry_run: bool = False, manager: str | None = None) -> Obj:
        with self._write(dry_run, (manager, "status") if manager else None) as tx:
            return self._update_status(tx, obj)

    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj, *, status: bool = False,
              dry_run: bool = False, manager: str | None = None) -> Obj:
        info = resolve_kind(kind)
        with self._write(dry_run, (manager, "status" if status else None) if manager else None) as tx:
            return self._patch(tx, info, self._ns_arg(info, namespace), name, patch, status)

    def delete(self, kind: str, name: str, namespace: str | None = None, *, dry_run: bool = False,
               preconditions: dict[str, str] | None = None) -> Obj:
        """Delete; `preconditions` (`uid`, `resourceVersion`) must match the object, else ConflictError."""
        info = resolve_kind(kind)
        with self._write(dry_run) as tx:
            return self._delete(tx, info, self._ns_arg(info, namespace), name, preconditions)

    def apply(self, obj: Obj, *, dry_run: bool = False) -> tuple[Obj, str]:
        return self.apply_many([obj], dry_run=dry_run)[0]

    def apply_many(self, objs: list[Obj], *, dry_run: bool = False) -> list[tuple[Obj, str]]:
        """Create or update each object, all in one transaction: all succeed or none is written."""
        results: list[tuple[Obj, str]] = []
        with self._write(dry_run) as tx:
            for index, obj in enumerate(objs, 1):
                try:
                    results.append(self._apply(tx, obj))
                except ApiError as exc:
                    # Name the failing item: the whole batch is rolled back, so the user must find it.
                    raise type(exc)(f"item {index} ({_label(obj)}): {exc.message}", hint=exc.hint) from exc
        return results

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        info = resolve_kind(kind)
        with self._read() as db:
            return self._require(db, info, self._ns_arg(info, namespace), name)

    def list_json(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[str], int]:
        """Matching objects as JSON text (no re-encoding on the unfiltered path) and the list's version."""
        info = resolve_kind(kind)
        predicate = compile_selectors(label_selector, field_selector)
        with self._read() as db:
            rv = int(db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()[0])
            if info.namespaced and namespace:
                rows = db.execute(
                    "SELECT data FROM objects WHERE kind = ? AND namespace = ? ORDER BY name",
                    (info.kind, namespace),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT data FROM objects WHERE kind = ? ORDER BY namespace, name", (info.kind,)
                ).fetchall()
        if predicate is None:
            return [r[0] for r in rows], rv
        return [r[0] for r in rows if predicate(json.loads(r[0]))], rv

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], str]:
        items, rv = self.list_json(kind, namespace, label_selector, field_selector)
        return [json.loads(i) for i in items], str(rv)

    def resource_version(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()[0])

    def events_since(
        self, after: int, kind: str, namespace: str | None = None, limit: int = 1000
    ) -> tuple[builtins.list[ChangeEvent], int]:
        """Change-log rows of `kind` with version > `after`, in order, and the version scanned up to.

        Every event with a version <= the returned version has been considered, so a watcher may resume
        from it (and send it as a BOOKMARK). Raises GoneError when `after` is older than the kept log.
        """
        info = resolve_kind(kind)
        with self._read() as db:
            rv = int(db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()[0])
            compacted = int(db.execute("SELECT value FROM meta WHERE key = 'compacted'").fetchone()[0])
            if after < compacted:
                raise GoneError(
                    f"resource version {after} is too old (the oldest available is {compacted}): re-list",
                    hint="list the objects again and watch from the list's resourceVersion",
                )
            sql = "SELECT rv, type, data, prev FROM events WHERE rv > ? AND rv <= ? AND kind = ?"
            args: list[Any] = [after, rv, info.kind]
            if info.namespaced and namespace:
                sql += " AND namespace = ?"
                args.append(namespace)
            rows = db.execute(sql + " ORDER BY rv LIMIT ?", (*args, limit)).fetchall()
        events = [ChangeEvent(r[0], r[1], r[2], r[3]) for r in rows]
        scanned = events[-1].rv if len(events) == limit else max(after, rv)
        return events, scanned

    def unknown_fields_report(self, limit: int = 100) -> builtins.list[str]:
        """Objects stored with fields their kind does not define (written before strict field validation),
        one line each (`AuthorizationPolicy shop/x: unknown field "spec..."`), at most `limit`. Consumers
        ignore such fields, so a misspelt one may be silently ineffective: these objects need re-applying."""
        with self._read() as db:
            rows = db.execute("SELECT kind, namespace, name, data FROM objects ORDER BY kind, namespace, name")
            found: builtins.list[str] = []
            for kind, namespace, name, data in rows:
                try:
                    unknown = find_unknown_fields(json.loads(data), kind)
                except (KeyError, ValueError):
                    continue
                if unknown:
                    listed = ", ".join(u.message() for u in unknown[:5])
                    shown = resolve_kind(kind).display_kind  # the store's key may be internal (IstioGateway)
                    found.append(f"{shown} {namespace + '/' if namespace else ''}{name}: {listed}")
                    if len(found) >= limit:
                        break
        return found

    def expire_events(self, now: float | None = None) -> int:
        """Delete the Events last seen more than `event_limits.ttl` seconds ago (kube-apiserver's --event-ttl);
        how many went. One transaction, only when there is something to delete."""
        now = time.time() if now is None else now
        with self._read() as db:
            rows = db.execute("SELECT data FROM objects WHERE kind = 'Event'").fetchall()
        expired = []
        for (data,) in rows:
            obj = json.loads(data)
            seen = last_seen(obj)
            if seen is None or now - seen > self.event_limits.ttl:
                expired.append(obj)
        if not expired:
            return 0
        info = resolve_kind("Event")
        gone = 0
        with self._write() as tx:
            for obj in expired:
                meta = obj["metadata"]
                current = self._load(tx.db, info, meta.get("namespace") or "default", meta["name"])
                if current is not None and current["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
                    self._remove(tx, info, current)
                    gone += 1
        return gone

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


def _label(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "not an object"
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f'{obj.get("kind", "?")} "{(meta or {}).get("name", "?")}"'
