"""The node proxy's in-memory model of workloads, services and authorization policies.

Role: immutable values mirroring the xDS messages `istio.workload.{Workload, Service, GatewayAddress, Port,
LoadBalancing, ...}` and `istio.security.{Authorization, Rule, Clause, Match, StringMatch, Address,
ServiceAccountMatch}` (protocols.md section 3). Field names are the proto field names in snake_case and
every enum is an `IntEnum` carrying the proto numbers, so protobuf <-> model conversion is a field copy:
raw IP bytes become `ipaddress` objects (`ip_address(bytes)`), a `oneof` becomes a union-typed field,
`google.protobuf.UInt32Value` becomes `int | None`.

Invariants:
- Every value is a frozen dataclass: a value handed to a store is never mutated afterwards, so readers can
  share it without copies or locks. (`Workload.services` is a dict for a direct proto-map copy; treat it as
  read-only. It also makes `Workload` unhashable, which nothing needs.)
- Addresses are `ipaddress.IPv4Address | IPv6Address` objects, never strings; the default network is "".
- Identities are SPIFFE URIs `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from ambient.state.errors import InvalidResourceError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_HBONE_PORT = 15008
SPIFFE_PREFIX = "spiffe://"


# ---------------------------------------------------------------------------------------------- enums
# Numbers are the proto enum numbers (protocols.md s.3); names are the proto names.


class TunnelProtocol(enum.IntEnum):
    NONE = 0
    HBONE = 1
    LEGACY_ISTIO_MTLS = 2


class WorkloadType(enum.IntEnum):
    DEPLOYMENT = 0
    CRONJOB = 1
    POD = 2
    JOB = 3


class WorkloadStatus(enum.IntEnum):
    HEALTHY = 0
    UNHEALTHY = 1


class NetworkMode(enum.IntEnum):
    STANDARD = 0
    HOST_NETWORK = 1


class AppProtocol(enum.IntEnum):
    UNKNOWN = 0
    HTTP11 = 1
    HTTP2 = 2
    GRPC = 3
    TCP = 4
    TLS = 5


class IpFamilies(enum.IntEnum):
    AUTOMATIC = 0
    IPV4_ONLY = 1
    IPV6_ONLY = 2
    DUAL = 3


class ServiceVisibility(enum.IntEnum):
    PUBLIC = 0
    NAMESPACE = 1


class LoadBalancingScope(enum.IntEnum):
    UNSPECIFIED_SCOPE = 0
    REGION = 1
    ZONE = 2
    SUBZONE = 3
    NODE = 4
    CLUSTER = 5
    NETWORK = 6


class LoadBalancingMode(enum.IntEnum):
    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class HealthPolicy(enum.IntEnum):
    ONLY_HEALTHY = 0
    ALLOW_ALL = 1


class ApplicationTunnelProtocol(enum.IntEnum):
    NONE = 0
    PROXY = 1


class Scope(enum.IntEnum):
    """`istio.security.Scope`: which workloads an Authorization applies to."""

    GLOBAL = 0
    NAMESPACE = 1
    WORKLOAD_SELECTOR = 2


class Action(enum.IntEnum):
    """`istio.security.Action`. CUSTOM/AUDIT never reach the node proxy (the control plane drops them)."""

    ALLOW = 0
    DENY = 1


# ---------------------------------------------------------------------------------- workload helpers


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    """`istio.workload.NetworkAddress` (the proto's optional `length` is only used for CIDR ranges)."""

    address: IPAddress
    network: str = ""


@dataclass(frozen=True, slots=True)
class NamespacedHostname:
    namespace: str
    hostname: str

    @property
    def key(self) -> str:
        """The Service resource name this hostname refers to ("ns/hostname")."""
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """`istio.workload.GatewayAddress`: a waypoint or network gateway, by hostname or by address.

    On the wire an unset `hbone_mtls_port` is 0: converters pass `port or DEFAULT_HBONE_PORT`."""

    destination: NamespacedHostname | NetworkAddress
    hbone_mtls_port: int = DEFAULT_HBONE_PORT


@dataclass(frozen=True, slots=True)
class Port:
    """`istio.workload.Port`. `target_port == 0` means "named port": resolve it per workload."""

    service_port: int
    target_port: int = 0
    app_protocol: AppProtocol = AppProtocol.UNKNOWN


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """`istio.workload.LoadBalancing`. `routing_preference` is ordered, most significant scope first."""

    routing_preference: tuple[LoadBalancingScope, ...] = ()
    mode: LoadBalancingMode = LoadBalancingMode.UNSPECIFIED_MODE
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


@dataclass(frozen=True, slots=True)
class ApplicationTunnel:
    protocol: ApplicationTunnelProtocol = ApplicationTunnelProtocol.NONE
    port: int = 0


@dataclass(frozen=True, slots=True)
class WeightedWaypoint:
    destination: GatewayAddress
    weight: int = 0


# ------------------------------------------------------------------------------ workload and service


@dataclass(frozen=True)
class Workload:
    """`istio.workload.Workload` (resource name = `uid`)."""

    uid: str
    name: str = ""
    namespace: str = ""
    addresses: tuple[IPAddress, ...] = ()
    hostname: str = ""
    network: str = ""
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: WorkloadType = WorkloadType.DEPLOYMENT
    workload_name: str = ""
    native_tunnel: bool = False
    authorization_policies: tuple[str, ...] = ()
    status: WorkloadStatus = WorkloadStatus.HEALTHY
    cluster_id: str = ""
    # "ns/hostname" of each Service this workload backs -> its port list (target ports resolved per pod).
    services: Mapping[str, tuple[Port, ...]] = field(default_factory=dict)
    application_tunnel: ApplicationTunnel | None = None
    locality: Locality | None = None
    network_mode: NetworkMode = NetworkMode.STANDARD
    capacity: int | None = None

    def __post_init__(self) -> None:
        if not self.uid:
            raise InvalidResourceError(
                f"workload {self.namespace}/{self.name} has an empty uid",
                hint="every Workload resource is named by its uid; the control plane must set it",
            )

    @property
    def identity(self) -> str:
        """The SPIFFE identity this workload's certificate carries."""
        return spiffe_id(self.trust_domain, self.namespace, self.service_account)

    @property
    def in_mesh(self) -> bool:
        """True when peers must reach it over HBONE (the zc PROTOCOL column: HBONE vs TCP)."""
        return self.tunnel_protocol == TunnelProtocol.HBONE

    @property
    def weight(self) -> int:
        """Load-balancing weight: `capacity`, 1 when unset (google.protobuf.UInt32Value absent)."""
        return 1 if self.capacity is None else self.capacity


@dataclass(frozen=True)
class Service:
    """`istio.workload.Service` (resource name = `namespace/hostname`)."""

    name: str
    namespace: str
    hostname: str
    addresses: tuple[NetworkAddress, ...] = ()
    ports: tuple[Port, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None
    ip_families: IpFamilies = IpFamilies.AUTOMATIC
    canonical: bool = False
    ingress_use_waypoint: bool = False
    weighted_waypoints: tuple[WeightedWaypoint, ...] = ()
    visibility: ServiceVisibility = ServiceVisibility.PUBLIC

    def __post_init__(self) -> None:
        if not self.namespace or not self.hostname:
            raise InvalidResourceError(
                f"service {self.namespace!r}/{self.hostname!r} needs both a namespace and a hostname",
                hint="a Service resource is named namespace/hostname",
            )

    @property
    def key(self) -> str:
        return service_key(self.namespace, self.hostname)

    def port(self, service_port: int) -> Port | None:
        for p in self.ports:
            if p.service_port == service_port:
                return p
        return None


# ------------------------------------------------------------------------------------ authorization


class StringMatchKind(enum.IntEnum):
    """Which branch of the `StringMatch` oneof is set (numbers are the proto field numbers)."""

    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    PRESENCE = 4


@dataclass(frozen=True, slots=True)
class StringMatch:
    """`istio.security.StringMatch`: exact / prefix / suffix value, or presence (any non-empty value)."""

    kind: StringMatchKind
    value: str = ""

    @classmethod
    def exact(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.EXACT, value)

    @classmethod
    def prefix(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.PREFIX, value)

    @classmethod
    def suffix(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.SUFFIX, value)

    @classmethod
    def presence(cls) -> StringMatch:
        return cls(StringMatchKind.PRESENCE)

    def matches(self, candidate: str) -> bool:
        if self.kind == StringMatchKind.EXACT:
            return candidate == self.value
        if self.kind == StringMatchKind.PREFIX:
            return candidate.startswith(self.value)
        if self.kind == StringMatchKind.SUFFIX:
            return candidate.endswith(self.value)
        return candidate != ""

    def __str__(self) -> str:
        return {
            StringMatchKind.EXACT: self.value,
            StringMatchKind.PREFIX: f"{self.value}*",
            StringMatchKind.SUFFIX: f"*{self.value}",
            StringMatchKind.PRESENCE: "*",
        }[self.kind]


@dataclass(frozen=True, slots=True)
class Address:
    """`istio.security.Address`: a CIDR given as an address and a prefix length."""

    address: IPAddress
    length: int

    def __post_init__(self) -> None:
        if not 0 <= self.length <= self.address.max_prefixlen:
            raise InvalidResourceError(
                f"CIDR length {self.length} is out of range for {self.address}",
                hint=f"use 0..{self.address.max_prefixlen}",
            )

    @classmethod
    def parse(cls, text: str) -> Address:
        """'10.0.0.0/8', '2001:db8::/32' or a bare address (a host route)."""
        net = ip_network(text, strict=False)
        return cls(net.network_address, net.prefixlen)

    @property
    def network(self) -> IPNetwork:
        # strict=False: host bits set in the policy are ignored, as Envoy does for CidrRange.
        return ip_network((self.address, self.length), strict=False)

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.address.version:
            return False
        return ip in self.network

    def __str__(self) -> str:
        return f"{self.address}/{self.length}"


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    """`istio.security.ServiceAccountMatch` (proto field `serviceAccount`). Empty namespace: any namespace."""

    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class Match:
    """`istio.security.Match`: fields AND together, values of one field OR together."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[Address, ...] = ()
    not_source_ips: tuple[Address, ...] = ()
    destination_ips: tuple[Address, ...] = ()
    not_destination_ips: tuple[Address, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Clause:
    """Matches OR together."""

    matches: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """Clauses AND together."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    """`istio.security.Authorization` (resource name = `namespace/name`). Rules OR together."""

    name: str
    namespace: str
    scope: Scope = Scope.WORKLOAD_SELECTOR
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.namespace:
            raise InvalidResourceError(
                f"authorization {self.namespace!r}/{self.name!r} needs both a namespace and a name",
                hint="an Authorization resource is named namespace/name",
            )

    @property
    def key(self) -> str:
        return policy_key(self.namespace, self.name)


# ------------------------------------------------------------------------------------------ helpers


def service_key(namespace: str, hostname: str) -> str:
    return f"{namespace}/{hostname}"


def policy_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"{SPIFFE_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_ip(value: str | bytes | IPAddress) -> IPAddress:
    """An address from text or raw proto bytes (4 or 16 bytes); raises InvalidResourceError otherwise."""
    try:
        if isinstance(value, bytes):
            if len(value) not in (4, 16):
                raise ValueError(f"{len(value)} bytes")
            return ip_address(value)
        return ip_address(value)
    except ValueError as e:
        raise InvalidResourceError(
            f"not an IP address: {value!r} ({e})", hint="addresses are 4 (IPv4) or 16 (IPv6) raw bytes"
        ) from e


def canonical_ip(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (::ffff:a.b.c.d, as seen on dual-stack sockets) -> the IPv4 address."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
