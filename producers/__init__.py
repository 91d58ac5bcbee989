"""The worker-side SDK: runs inside training processes and publishes their telemetry.

import producers
monitor = producers.init(run="my-run")
monitor.log(step, loss=loss, lr=lr)
"""

from producers.monitor import Monitor, init

__all__ = ["Monitor", "init"]
