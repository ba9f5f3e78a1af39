"""Observability: Prometheus metrics (multiprocess-aware) and OpenTelemetry spans."""
