"""Idle policies: when a model is given back, and started again ahead of demand."""
