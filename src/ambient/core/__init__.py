"""Shared foundations: the error base, logging setup, process helpers."""
