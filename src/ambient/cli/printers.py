"""Per-kind table columns for `ambient get`: they live in `ambient.api.tables`, shared with the API server's
Table responses so that `kubectl get` prints the same columns as `ambient get`."""

from ambient.api.tables import NONE, Obj, Row, build_table, display_name

__all__ = ["NONE", "Obj", "Row", "build_table", "display_name"]
