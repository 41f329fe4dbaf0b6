"""GPU placement inputs: which GPUs exist and how large they are (`inventory`), what each
profile needs on which of them (`needs`, parsed from `docker compose config`), and the
peaks measured at earlier runs (`measured`). The decision itself is pure and lives in
`supervisor/lifecycle/placement.py`."""
