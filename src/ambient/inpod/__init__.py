"""inpod package."""
