"""GPU memory as one budget: which GPUs exist and how large they are (`inventory`), what each
profile needs on which of them (`needs`, parsed from `docker compose config`), the peaks
measured at earlier runs (`measured`), the pure planner (`placement`) and the budget that
admits starts and carries out evictions (`budget`)."""
