"""What operators read: Prometheus metrics, their exposition, and the NVML sampler."""
