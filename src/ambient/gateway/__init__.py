"""The ingress gateway: listeners (HTTP, HTTPS with a certificate from a Secret) routing with the
waypoint's engine (`ambient.l7`) by the HTTPRoutes attached to its Gateway API Gateway, or - the classic
Istio ingress - by the VirtualServices bound to the networking.istio.io Gateways selecting its pod. Run as
`python -m ambient.gateway` by the pods of `ambient.cluster.gateways` (controller and `install ingress`)."""
