"""hbone package."""
