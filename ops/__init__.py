"""Operations: Prometheus metrics, health probes and logging helpers."""
