"""What idling saved and cost: the live account (account.py), its figures (figures.py),
its counters (metrics.py)."""
