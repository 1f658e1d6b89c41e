"""Sample workloads shipped with the project (run as pod commands in the local cluster)."""
