"""The orchestrator: module calls, lifecycle, breakers and configuration."""
