"""The Grafana dashboard's generator (dashboards/generate.py) and its parts."""
