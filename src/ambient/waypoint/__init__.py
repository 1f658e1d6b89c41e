"""The waypoint: the optional L7 proxy of the mesh (protocols.md section 8).

Layout (decide, then do):
- HTTPRoute parsing and matching is `ambient.l7` (shared with the API's validation and the control plane).
- `l7authz` (pure): targetRef AuthorizationPolicy evaluation per request (or per L4 connection).
- `messages`, `http1` (h11), `http2` (h2), `h2client`: HTTP servers on an inner HBONE stream and the
  upstream HTTP/1.1 / HTTP/2 clients, with bounded buffers and abuse limits.
- `server`: `Waypoint.handle_connect`, the CONNECT handler for `ambient.hbone.server.HboneServer`.
- `config`: where HTTPRoutes/policies come from (static YAML or the cluster API); `telemetry`: access log
  and `istio_requests_total` / `istio_request_duration_milliseconds`.
- `app`: the composition root (`build(settings)`); `__main__`: the `python -m ambient.waypoint` entry point.
- `workers`: the waypoint on every core (AMBIENT_WAYPOINT_WORKERS): processes sharing the HBONE address
  through SO_REUSEPORT, supervised by the primary, which adds their metrics up.
  The in-process topology for tests and the benchmark is `ambient.bench.loopback`.
"""
