"""`model-supervisor simulate`: a trace replayed through the real handles, idle timers,
idle policy and GPU budget, on a runtime that only waits and a clock that jumps."""
