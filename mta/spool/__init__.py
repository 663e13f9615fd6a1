"""The durable queue in Python: enqueue with group commit, leases, settling."""
