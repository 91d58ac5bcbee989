"""The read path: typed reads of what the sinks wrote to Redis, and everything built on
them (query views, the HTTP API and dashboard, the Prometheus exporter, exports, the alert
feed). Nothing here writes metrics; silences go through the alerting stage's store."""
