"""The write path: faust sink workers that persist stage output to Redis and deliver alerts."""
