"""What every proxy process shares at run time, below the components: the admin/readiness server
(`admin`), the one drain primitive (`drain`) and access-log rendering (`accesslog`).
Imports only `core` and third-party code."""
