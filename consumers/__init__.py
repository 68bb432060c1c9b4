"""The only package that touches Kafka: consumer loops, producers, offsets, DLQs,
metrics, health, settings and the ``tidings`` command."""
