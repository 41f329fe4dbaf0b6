"""The anatomy of a start: where its seconds go, read from the server's own log."""
