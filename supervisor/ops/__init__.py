"""What operators drive: the admin API and its client, control of models, keep-warm
schedules and `check-config`."""
