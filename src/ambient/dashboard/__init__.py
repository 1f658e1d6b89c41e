"""The live mesh dashboard (`ambient dashboard`): a page served on localhost by aiohttp, every asset shipped
in this package (no CDN, no request leaves the machine). `model` is the pure aggregation of access lines
into the graph and the connections table; `server` tails the logs, serves the page, a server-sent event
stream of snapshots and each connection's trace."""
