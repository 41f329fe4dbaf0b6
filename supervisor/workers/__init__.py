"""Worker processes that share the proxy port with the lifecycle owner (docs/multi-worker.md)."""
