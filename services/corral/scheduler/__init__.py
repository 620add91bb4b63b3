"""The scheduler service: durable priority task queue."""
