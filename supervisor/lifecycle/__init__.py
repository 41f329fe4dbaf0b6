"""A model's life: the pure lifecycle table, the handle that owns its state, the I/O
effects the handle runs, and the profile and readiness rules they use."""
