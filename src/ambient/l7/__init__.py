"""The L7 route model shared by the API server's validation, the control plane's route status and the
waypoint: HTTPRoute parsing and matching (`routing`) and its filters (`filters`). Pure data and
decisions, no I/O; sits below the components so none of them imports another for it."""
