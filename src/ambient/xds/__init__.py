"""The xDS client side both proxies share: a delta ADS client that keeps a state store in sync with the
control plane (`client`). Sits below the proxies (ztunnel, waypoint) and above `state`/`identity`."""
