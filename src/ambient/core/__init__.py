"""Shared foundations of every package: the error base (`errors`), retry back-off (`backoff`) and the one
process bootstrap (`process`: logging, signals, the event loop)."""
