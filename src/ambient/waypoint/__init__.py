"""waypoint package."""
