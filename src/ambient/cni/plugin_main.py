"""Executable entry of the chained CNI plugin (`ambient-cni`): env + stdin in, JSON on stdout, exit code.

Kept separate from `plugin.py` so the entry stays trivial; see `ambient.cni.plugin` for the behaviour.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from ambient.cni.plugin import run

    code, out = run(os.environ, sys.stdin.read())
    if out:
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
