"""The local cluster's "outside world": hosts beyond the cluster's nodes that workloads call as external
services (the targets of ServiceEntries, egress gateways and waypoints).

Topology (addresses from `OUTSIDE_HOSTS`):

    amb-C-outside-k:  eth0 172.18.200.k/16 (peer of veth-o<k>, a port of the underlay bridge br0),
                      routes 10.244.j.0/24 via node j (replies to pods), `unreachable default`,
                      the hermetic firewall; runs an HTTP server on :80 and HTTPS on :443 (httpbin)

Invariants:
- like every cluster netns, the outside hosts are linked to the underlay only (the veth pair is created
  in the underlay and its peer moved into the host's netns): pods reach them through their node and the
  underlay, never through the machine's own network namespace; the cluster stays hermetic;
- names under the test domain `example.test` (RFC 2606: never a real name) are served by the cluster DNS
  from `<state>/outside/hosts.json` (`records`); nothing else about the outside is known to the cluster:
  no Service, no Workload, so traffic to it is passthrough unless a ServiceEntry describes it;
- the HTTPS certificate comes from a throw-away "public" CA (`<state>/outside/ca.crt`, made per cluster,
  unrelated to the mesh CA): clients trust it with `curl --cacert <state>/outside/ca.crt` or
  `SSL_CERT_FILE`;
- the namespaces carry the `amb-C-` prefix and the servers run as supervised components of the cluster,
  so `ambient cluster delete` removes them like everything else.

`python -m ambient.cluster.outside --state-dir DIR --host N` runs the servers of outside host N (inside
its netns; started by `create_outside_world`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from ambient.cluster import layout as L
from ambient.cluster import network, processes
from ambient.cluster.errors import ClusterError
from ambient.core import process

log = logging.getLogger("ambient.cluster.outside")

OUTSIDE_DOMAIN = "example.test"
HTTP_PORT = 80
HTTPS_PORT = 443


@dataclass(frozen=True)
class OutsideHost:
    index: int
    names: tuple[str, ...]

    @property
    def ip(self) -> str:
        return f"172.18.200.{self.index}"

    def netns(self, cluster: str) -> str:
        return f"{L.netns_prefix(cluster)}outside-{self.index}"

    @property
    def component(self) -> str:
        return f"outside-{self.index}"


OUTSIDE_HOSTS: tuple[OutsideHost, ...] = (
    OutsideHost(1, ("httpbin.example.test",)),
    OutsideHost(2, ("api.example.test",)),
)


def outside_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "outside"


def host_by_index(index: int) -> OutsideHost:
    for host in OUTSIDE_HOSTS:
        if host.index == index:
            return host
    raise ClusterError(f"no outside host {index}", hint=f"hosts: {', '.join(str(h.index) for h in OUTSIDE_HOSTS)}")


# ------------------------------------------------------------------------------------------ DNS records


def records_of(hosts: tuple[OutsideHost, ...]) -> dict[str, list[str]]:
    return {name: [host.ip] for host in hosts for name in host.names}


def records(state_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The outside names the cluster DNS answers (empty when the cluster has no outside world)."""
    try:
        data = json.loads((outside_dir(state_dir) / "hosts.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k).lower(): [str(ip) for ip in v] for k, v in data.items() if isinstance(v, list)}


def in_outside_zone(name: str) -> bool:
    name = name.lower().rstrip(".")
    return name == OUTSIDE_DOMAIN or name.endswith("." + OUTSIDE_DOMAIN)


# ------------------------------------------------------------------------------------------ certificates


def write_certificates(state_dir: str | os.PathLike[str], names: list[str]) -> tuple[Path, Path, Path]:
    """A throw-away public CA and one server certificate for `names`: (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = outside_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambient outside world"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "ambient test public CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, crt_path, key_path = d / "ca.crt", d / "server.crt", d / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return ca_path, crt_path, key_path


# ------------------------------------------------------------------------------------------ network


def network_commands(host: OutsideHost, layout: L.ClusterLayout) -> tuple[list[str], list[str]]:
    """(`ip` commands in the underlay, in the outside host's netns): pure."""
    ns = host.netns(layout.name)
    under = [
        f"link add veth-o{host.index} type veth peer name eth0 netns {ns}",
        f"link set veth-o{host.index} master br0",
        f"link set veth-o{host.index} up",
    ]
    inside = ["link set lo up", f"addr add {host.ip}/16 dev eth0", "link set eth0 up"]
    inside += [f"route add {node.pod_cidr} via {node.ip}" for node in layout.nodes]
    inside.append("route add unreachable default")
    return under, inside


def create_outside_world(layout: L.ClusterLayout, hosts: tuple[OutsideHost, ...] = OUTSIDE_HOSTS) -> list[str]:
    """Build the outside hosts of a running cluster and start their servers; returns their netns names.
    The DNS records are written last: a name resolves only once its host exists."""
    names = [h.netns(layout.name) for h in hosts]
    existing = set(network.list_netns())
    if any(n in existing for n in names):
        raise ClusterError(f"the outside world of cluster {layout.name!r} already exists",
                           hint=f"`ambient cluster delete --name {layout.name}` removes it with the cluster")
    network.ip_batch(None, [f"netns add {n}" for n in names])
    network.pin_bridge_address(layout.underlay_netns)  # the new ports must not change br0's address
    ruleset = network.hermetic_ruleset()
    for host, ns in zip(hosts, names, strict=True):
        network.set_sysctls(ns, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})
        under, inside = network_commands(host, layout)
        network.ip_batch(layout.underlay_netns, under)
        network.ip_batch(ns, inside)
        network.run(network.nsenter_argv(ns, ["nft", "-f", "-"]), stdin=ruleset)
    write_certificates(layout.state_dir, [n for h in hosts for n in h.names])
    for host, ns in zip(hosts, names, strict=True):
        argv = processes.python_module_argv("ambient.cluster.outside", "--state-dir", layout.state_dir,
                                            "--host", str(host.index))
        processes.start_component(layout, host.component, argv, netns=ns,
                                  env={"AMBIENT_COMPONENT_OF": layout.state_dir})
    path = outside_dir(layout.state_dir) / "hosts.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records_of(hosts), indent=2))
    tmp.replace(path)
    return names


# ------------------------------------------------------------------------------------------ servers


async def serve(state_dir: Path, host: OutsideHost, stop: asyncio.Event) -> None:
    from aiohttp import web

    from ambient.samples.httpbin import make_app

    runner = web.AppRunner(make_app(pod_name=host.names[0]))
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    d = outside_dir(state_dir)
    tls.load_cert_chain(d / "server.crt", d / "server.key")
    sites = [web.TCPSite(runner, "0.0.0.0", HTTP_PORT), web.TCPSite(runner, "0.0.0.0", HTTPS_PORT, ssl_context=tls)]
    for site in sites:
        await site.start()
    log.info("outside host %s (%s) serving http :%d and https :%d", host.names[0], host.ip, HTTP_PORT, HTTPS_PORT)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ambient.cluster.outside",
                                     description="run the servers of one outside host (in its netns)")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--host", required=True, type=int)
    args = parser.parse_args(argv)
    process.configure_logging("INFO", fmt="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run(shutdown: process.Shutdown) -> None:
        stop = asyncio.Event()
        shutdown.on_signal(stop.set)
        await serve(args.state_dir, host_by_index(args.host), stop)

    process.run(run)


if __name__ == "__main__":
    main()
