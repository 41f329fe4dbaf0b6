"""A model's life: the handle that owns its state, the I/O effects the handle runs, leases,
readiness and liveness, replica sets and the registry. The rules they follow are pure and
live in `supervisor/rules/`."""
