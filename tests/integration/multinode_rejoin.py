"""A rank restarted on a node that came back (tests/integration/test_multinode.py): the
same run id, rank and world from the environment (``STEPSTREAM_RUN``, ``RANK``,
``WORLD_SIZE``), the public SDK only, no collective; it logs ``rejoined`` until the
control folder (argv[1]) holds ``stop``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import producers


def main() -> None:
    control = Path(sys.argv[1])
    monitor = producers.init()
    step = 0
    while not (control / "stop").exists():
        monitor.log(step, rejoined=1.0)
        step += 1
        time.sleep(0.1)
    monitor.close()


if __name__ == "__main__":
    main()
