"""Sinks: the Redis writer and reader (query API) and alert delivery."""
