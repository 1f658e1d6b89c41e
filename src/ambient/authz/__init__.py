"""authz package: pure L4 authorization evaluation (see `ambient.authz.evaluate`)."""
