"""ambient: a sidecar-less service mesh in Python, in the design of Istio's ambient mode.

Layout mirrors the architecture (see docs/architecture.md):
core/ (errors, logging), api/ (object model, store, API server, client), cli/ (the `ambient` command),
cluster/ (the hermetic local cluster), identity/ and tls/ (SPIFFE, CA, TLS contexts), protocol/ (own .proto
sources and codecs), hbone/ (HTTP/2 CONNECT tunnels), state/ (workload/service/policy stores),
authz/ (pure policy evaluation), ztunnel/ (node proxy), inpod/ (netns + ZDS), cni/ (plugin, rules, node agent),
waypoint/ (L7 proxy), controlplane/ (xDS + CA servers).
"""

__version__ = "0.1.0"
