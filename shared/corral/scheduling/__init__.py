"""What the scheduler, its workers and its clients share: the task messages, routes, settings and
the JetStream resources of the task queue."""
