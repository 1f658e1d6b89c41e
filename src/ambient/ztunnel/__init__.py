"""ztunnel package."""
