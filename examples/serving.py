"""A small model served from a loop, monitored with the serving SDK; its labels (and the
users' clicks) arrive later, the way they do in production.

stepstream up
python examples/serving.py --model ctr-model
stepstream query --model ctr-model --performance
stepstream query --model ctr-model --drift      # after a window (STEPSTREAM_SERVING_WINDOW_S)
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import time

from producers import serving


def main() -> None:
    """Serve a logistic model on synthetic requests; report outcomes `--delay` requests
    later, from a queue, as a label pipeline would."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ctr-model")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--predictions", type=int, default=2000)
    parser.add_argument("--delay", type=int, default=100, help="requests before a label")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    args = parser.parse_args()

    rng = random.Random(0)
    countries = ["DE", "FR", "US", "IT"]
    weights = {"age": 0.04, "visits": 0.3}

    def request() -> dict[str, float | str]:
        return {
            "age": rng.gauss(40, 10),
            "visits": float(rng.randint(0, 10)),
            "country": rng.choice(countries),
        }

    def score(x: dict[str, float | str]) -> float:
        z = -2.5 + sum(w * float(x[k]) for k, w in weights.items())
        return 1 / (1 + math.exp(-z))

    pm = serving.init(args.model, version=args.version)  # returns at once
    # What the model was trained on: drift is measured against it.
    train = [request() for _ in range(2000)]
    pm.reference(
        features={k: [x[k] for x in train] for k in ("age", "visits", "country")},
        scores=[score(x) for x in train],
    )
    waiting: collections.deque[tuple[str, float]] = collections.deque()
    labels = clicks = 0
    for i in range(args.predictions):
        x = request()
        s = score(x)
        pid = f"{args.model}-{i}"
        pm.log_prediction(
            pid,
            features=x,
            score=s,
            prediction=int(s >= 0.5),
            segment={"country": str(x["country"])},
        )
        waiting.append((pid, s))
        if len(waiting) > args.delay:  # the truth about an old request comes in
            old, p = waiting.popleft()
            truth = int(rng.random() < p)
            pm.log_outcome(old, label=truth)
            labels += 1
            if truth and rng.random() < 0.5:
                pm.log_outcome(old, clicked=True)
                clicks += 1
        time.sleep(1 / args.rate)
    pm.close()  # flushes; what the broker did not take stays in the spool
    print(f"model={args.model} predictions={args.predictions} labels={labels} clicks={clicks}")


if __name__ == "__main__":
    main()
