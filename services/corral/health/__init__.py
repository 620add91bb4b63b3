"""The health service: heartbeats, checks, resource figures and metrics."""
