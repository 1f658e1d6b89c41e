"""`python -m ambient.waypoint`: run one waypoint proxy process (flags -> `waypoint.app.AppSettings`; the
composition is `waypoint.app.build`).

    python -m ambient.waypoint (--static FILE --ca-dir DIR | --xds ADDR --root-cert FILE [--token-file FILE])
        [--listen 0.0.0.0:15008] [--name waypoint] [--namespace default] [--service-account waypoint]
        [--api-socket PATH] [--hbone-port 15008] [--metrics 0.0.0.0:15020] [--ready 0.0.0.0:15021] [--drain 5]

- Identity: a certificate for `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, either issued
  in-process by the local CA in `--ca-dir` (created if absent), or - with `--xds` - requested from the
  control plane's CA (`CreateCertificate`, no impersonation) with the pod's token (`--token-file`, default
  env `AMBIENT_TOKEN_FILE`); renewed at half its lifetime either way.
- Workload/service state: with `--xds`, followed from the control plane (delta ADS, node id
  `waypoint~<POD_IP>~<POD_NAME>.<ns>~<ns>.svc.cluster.local`, from the pod's env as the kubelet sets
  it); else the `workloads`/`services` document of `--static`. L7 config: HTTPRoutes and
  AuthorizationPolicies of `--static`, or followed live from the cluster API with `--api-socket`.
- Ready (`--ready`, GET /healthz/ready) once the certificate, the xDS state and the L7 config arrived.
- Prints `waypoint listening on <ip>:<port>` on stdout once serving (port 0 picks a free port).
- SIGTERM/SIGINT: stop accepting at once, let live tunnels run up to `--drain` seconds, exit 0.
- Environment: AMBIENT_UVLOOP (on/off, default on: the event loop is uvloop's, as the node proxy's);
  AMBIENT_WAYPOINT_WORKERS = processes serving the HBONE address (default 1; `auto` = one per
  core, at most 64; see `waypoint.workers`); a bad value is refused at start, naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ambient.core import process
from ambient.core.errors import AmbientError
from ambient.core.flags import env_flag
from ambient.waypoint.app import AppSettings, build

TOKEN_ENV = "AMBIENT_TOKEN_FILE"  # = controlplane.pod_tokens.TOKEN_ENV (not imported: keep start-up light)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ambient.waypoint", description="Run an ambient waypoint (L7 proxy).")
    p.add_argument("--static", type=Path, help="YAML: HTTPRoutes, AuthorizationPolicies and/or workload state")
    p.add_argument("--ca-dir", type=Path, help="local CA directory (root-cert.pem, root-key.pem)")
    p.add_argument("--xds", help="control plane address (xDS + CA), e.g. 172.18.0.3:15012")
    p.add_argument("--root-cert", type=Path, help="mesh root certificate (PEM) to verify the control plane")
    p.add_argument("--token-file", type=Path, default=os.environ.get(TOKEN_ENV) or None,
                   help=f"bearer token for the control plane (default: ${TOKEN_ENV})")
    p.add_argument("--server-name", default="istiod.istio-system.svc", help="control plane TLS server name")
    p.add_argument("--listen", type=_addr, default=("0.0.0.0", 15008), help="HBONE listen address")
    p.add_argument("--name", default="waypoint", help="the waypoint's Gateway name")
    p.add_argument("--namespace", default="default", help="the waypoint's namespace")
    p.add_argument("--service-account", default="waypoint")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--hbone-port", type=int, default=15008, help="HBONE port of the endpoints' node proxies")
    p.add_argument("--api-socket", type=Path, help="follow HTTPRoutes/AuthorizationPolicies from this cluster API")
    p.add_argument("--metrics", type=_addr, help="Prometheus endpoint address (e.g. 0.0.0.0:15020)")
    p.add_argument("--ready", type=_addr, help="readiness endpoint address (e.g. 0.0.0.0:15021)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds live tunnels may run after SIGTERM")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if args.xds is None and args.ca_dir is None:
        p.error("one of --ca-dir (local CA) or --xds (control plane) is required")
    if args.xds is not None and args.root_cert is None:
        p.error("--xds needs --root-cert (the mesh root that signed the control plane's certificate)")
    return args


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> AppSettings:
    """The waypoint's settings from its flags and the pod's env (POD_IP/POD_NAME, as the kubelet sets them;
    AMBIENT_WAYPOINT_WORKERS, and a worker's role as its primary sets it). Raises ConfigError on bad values."""
    from ambient.waypoint.workers import workers_from_env

    env = dict(os.environ if env is None else env)
    workers, role = workers_from_env(env)
    return AppSettings(
        static=args.static, ca_dir=args.ca_dir, xds=args.xds, root_cert=args.root_cert, token_file=args.token_file,
        server_name=args.server_name, listen=args.listen, name=args.name, namespace=args.namespace,
        service_account=args.service_account, trust_domain=args.trust_domain, cluster_domain=args.cluster_domain,
        hbone_port=args.hbone_port, api_socket=args.api_socket, metrics=args.metrics, ready=args.ready,
        drain=args.drain, pod_ip=env.get("POD_IP") or env.get("INSTANCE_IP") or "0.0.0.0",
        pod_name=env.get("POD_NAME") or env.get("HOSTNAME") or args.name, workers=workers, worker=role,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        # uvloop as the node proxy (AMBIENT_UVLOOP, default on): 6% more requests/s, 6% less CPU per
        # request in the bench's own-process waypoint
        use_uvloop = env_flag(os.environ, "AMBIENT_UVLOOP", True)
    except AmbientError as exc:  # a bad setting in the environment: name it, no traceback
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        sys.exit(2)
    process.configure_logging(args.log_level, fmt="%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s",
                              quiet=("httpx",))
    # access lines carry their own timestamp and level (the node proxy's format): print them as they are
    access = logging.getLogger("ambient.waypoint.access")
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(plain)
    access.propagate = False

    async def run(shutdown: process.Shutdown) -> None:
        app = build(settings)
        shutdown.on_signal(app.stop)
        await app.run()

    try:
        process.run(run, use_uvloop=use_uvloop)
    except AmbientError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        sys.exit(1)


if __name__ == "__main__":
    main()
