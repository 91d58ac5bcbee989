"""stepstream: streaming telemetry for distributed model training.

This package holds the shared contract every stage imports: wire models, settings,
topic names, the Redis key schema, the embedded local stack and the CLI.
"""

__version__ = "0.1.0"
