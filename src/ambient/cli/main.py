"""The `ambient` command line (kubectl / kind / istioctl-like). Placeholder until the CLI lands."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("ambient: the command line is being built")
