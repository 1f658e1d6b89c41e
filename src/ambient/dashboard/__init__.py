"""The live mesh dashboard (`ambient dashboard`): a page served on localhost by aiohttp, every asset shipped
in this package (no CDN: the page loads nothing from elsewhere). `model` is the pure aggregation of access lines
into the graph and the connections table (and the one shape of a sources row); `server` keeps the lines (the
local cluster's log files), serves the page, a server-sent event stream of snapshots and each connection's
trace; the sources table comes from `local` on the local cluster (its log files, and each proxy's metrics
through loopback forwarders into its netns, `cluster.metrics_targets`) and from `kubernetes` on a Kubernetes
install (through kubectl: pods by label, `logs -f`, `port-forward` of the metrics port on loopback, policies)."""
