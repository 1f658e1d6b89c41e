"""SPIFFE identities of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Role: parse, validate and format the identity string carried as the single URI SAN of every workload
certificate (protocols.md section 2). Parsing is strict on purpose: the identity is what authorization
decides on, so anything ambiguous (upper case trust domain, empty or dot segments, percent-encoding,
query/fragment, NUL, extra path segments) is rejected instead of normalised.

Invariants: a `SpiffeId` always round-trips: `SpiffeId.parse(str(x)) == x`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ambient.identity.errors import InvalidSpiffeIdError

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"

# SPIFFE spec: trust domain is lower-case letters, digits, '.', '-', '_'; path segments are letters,
# digits, '.', '-', '_' (no percent-encoding). Kubernetes names are a subset of this.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,253}")
_MAX_URI_LEN = 2048


def _check_segment(value: str, what: str, uri: str) -> None:
    if not _SEGMENT_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidSpiffeIdError(
            f"invalid {what} {value!r} in SPIFFE id {uri!r}",
            hint="segments may only contain letters, digits, '.', '-' and '_' and may not be '.' or '..'",
        )


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A workload identity. `str()` gives the URI form."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        uri = f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"
        if not _TRUST_DOMAIN_RE.fullmatch(self.trust_domain):
            raise InvalidSpiffeIdError(
                f"invalid trust domain {self.trust_domain!r} in SPIFFE id {uri!r}",
                hint="a trust domain is lower-case letters, digits, '.', '-' and '_' (e.g. cluster.local)",
            )
        _check_segment(self.namespace, "namespace", uri)
        _check_segment(self.service_account, "service account", uri)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse `spiffe://<td>/ns/<ns>/sa/<sa>`; raise `InvalidSpiffeIdError` naming the problem."""
        if not isinstance(uri, str):
            raise InvalidSpiffeIdError(f"SPIFFE id must be a string, got {type(uri).__name__}")
        if len(uri) > _MAX_URI_LEN:
            raise InvalidSpiffeIdError(f"SPIFFE id is {len(uri)} characters long (max {_MAX_URI_LEN})")
        if "\x00" in uri:
            raise InvalidSpiffeIdError(f"SPIFFE id {uri!r} contains a NUL byte")
        if not uri.startswith(SCHEME):
            raise InvalidSpiffeIdError(
                f"SPIFFE id {uri!r} does not start with {SCHEME!r}",
                hint="expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            )
        rest = uri[len(SCHEME) :]
        if any(c in rest for c in "?#%@:"):
            raise InvalidSpiffeIdError(f"SPIFFE id {uri!r} has a query, fragment, port, user or escape")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeIdError(
                f"SPIFFE id {uri!r} is not of the form spiffe://<td>/ns/<namespace>/sa/<service-account>"
            )
        return cls(parts[0], parts[2], parts[4])

    @classmethod
    def for_workload(
        cls,
        namespace: str,
        service_account: str = DEFAULT_SERVICE_ACCOUNT,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> SpiffeId:
        return cls(trust_domain or DEFAULT_TRUST_DOMAIN, namespace, service_account or DEFAULT_SERVICE_ACCOUNT)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The form used by authorization policies: the URI without `spiffe://`."""
        return self.uri[len(SCHEME) :]

    def __str__(self) -> str:
        return self.uri


def is_valid(uri: str) -> bool:
    try:
        SpiffeId.parse(uri)
    except InvalidSpiffeIdError:
        return False
    return True
