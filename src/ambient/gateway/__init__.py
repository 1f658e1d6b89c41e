"""The ingress gateway: Gateway API listeners (HTTP, HTTPS from a Secret) routing by the HTTPRoutes
attached to its Gateway with the waypoint's routing engine (`ambient.l7`). Run as
`python -m ambient.gateway` by the pods of the ingress gateway controller (`ambient.cluster.gateways`)."""
