"""Kubernetes support: the object source (list+watch) and the CA's token authentication (TokenReview)."""
