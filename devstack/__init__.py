"""Development helpers: local Kafka and Redis, demo sinks and the demo driver.

Nothing here is imported by the pipeline's own packages; it starts and feeds
the real parts for ``make run``, ``make demo`` and the test suite.
"""
