"""`make bench`: side-by-side benchmarks of the mesh against baselines measured in the same run.

Entry point: `python -m ambient.bench [--only SECTION ...] [--quick]`. See `harness` (sections, results,
JSON), `report` (the generated markdown in docs/performance.md), `baselines` (iperf3 / stunnel / HTTP in
network namespaces this package creates) and `components` (the other packages' bench modules).
"""
