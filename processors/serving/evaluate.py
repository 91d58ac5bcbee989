"""The report of one closed window and the alert decisions on it.

Drift per feature (and for the score): PSI and Jensen-Shannon on the window's bin counts
against the reference's (exact), the calibrated threshold for the window's count, and KS
and Wasserstein from the sketches with their error bounds. Data quality per feature: the
share of missing, mistyped, out-of-range and unseen values. Performance: the window's
accuracy against the model's earlier windows (a drop of more than 3 binomial standard
errors below them, with at least the minimum count of labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.serving.bins import js_distance, psi
from processors.serving.drift import Calibrations, Streaks
from processors.serving.reference import FeatureReference, Reference
from processors.serving.sketches import ks, wasserstein
from processors.serving.stage import QUALITY

FEATURE_DRIFT = "feature_drift"
PREDICTION_DRIFT = "prediction_drift"
PERFORMANCE_DROP = "performance_drop"
DATA_QUALITY = "data_quality"


@dataclass
class Decision:
    """An alert to raise (``fire``) or resolve (``clear``)."""

    rule: str
    model: str
    version: str
    metric: str
    action: str
    summary: str
    evidence: dict[str, float | None] = field(default_factory=dict)


def bin_counts(counts: Mapping[str, int], prefix: str, size: int) -> list[int]:
    """The bin counts under `prefix` (``f|age|`` or ``s|``) as a vector of `size`."""
    return [int(counts.get(f"{prefix}{i}", 0)) for i in range(size)]


def feature_report(
    key: tuple[str, str, str],
    ref: FeatureReference,
    current: list[int],
    sketch: Any,
    calibrations: Calibrations,
    min_count: int,
) -> dict[str, Any]:
    """Drift figures of one feature in one window."""
    n = sum(current)
    out: dict[str, Any] = {"kind": ref.kind, "n": n, "judged": n >= min_count}
    if n == 0:
        return out
    threshold = calibrations.get(key, ref.counts, n)
    js = js_distance(ref.counts, current)
    out.update(
        psi=psi(ref.counts, current),
        js=js,
        threshold=threshold.value,
        threshold_mean=threshold.mean,
        threshold_std=threshold.std,
        drift=n >= min_count and js > threshold.value,
    )
    reference_sketch = ref.kll()
    if sketch is not None and reference_sketch is not None:
        k = ks(reference_sketch, sketch)
        w = wasserstein(reference_sketch, sketch)
        if k is not None:
            out["ks"] = {"value": k.value, "error_bound": k.error_bound}
        if w is not None:
            out["wasserstein"] = {"value": w.value, "error_bound": w.error_bound}
    return out


class Judge:
    """Judges the closed windows of every model version; keeps the streaks and the
    performance baselines."""

    def __init__(self, *, min_count: int, consecutive: int, quality_max_rate: float) -> None:
        self.min_count = min_count
        self.quality_max_rate = quality_max_rate
        self.calibrations = Calibrations()
        self.streaks = Streaks(consecutive)
        self.quality = Streaks(1)
        self.performance = Streaks(consecutive)
        #: (model, version) -> (labels, correct) of the windows judged so far.
        self.baseline: dict[tuple[str, str], tuple[float, float]] = {}

    def window(
        self,
        model: str,
        version: str,
        start: int,
        reference: Reference,
        counts: Mapping[str, int],
        sketches: Mapping[str, Any],
    ) -> tuple[dict[str, Any], list[Decision]]:
        """The drift and quality report of a closed window and the decisions on it."""
        decisions: list[Decision] = []
        features: dict[str, Any] = {}
        n = int(counts.get("n", 0))
        for name, ref in sorted(reference.features.items()):
            current = bin_counts(counts, f"f|{name}|", ref.size)
            report = feature_report(
                (model, version, name),
                ref,
                current,
                sketches.get(name),
                self.calibrations,
                self.min_count,
            )
            quality = {q: int(counts.get(f"q|{name}|{q}", 0)) for q in QUALITY}
            report["quality"] = quality
            features[name] = report
            self._drift(decisions, FEATURE_DRIFT, model, version, name, report)
            if n >= self.min_count:
                bad = sum(quality.values())
                rate = bad / n
                verdict = self.quality.observe((model, version, name), rate > self.quality_max_rate)
                if verdict is not None:
                    decisions.append(
                        Decision(
                            DATA_QUALITY,
                            model,
                            version,
                            f"feature:{name}",
                            verdict,
                            f"model {model} {version}: {bad} of {n} values of feature "
                            f"{name!r} missing, mistyped, out of range or unseen "
                            f"({rate:.1%} > {self.quality_max_rate:.1%}) in the window at "
                            f"{start}",
                            {
                                "value": rate,
                                "threshold": self.quality_max_rate,
                                "window": n,
                                **{q: float(v) for q, v in quality.items()},
                            },
                        )
                    )
        score: dict[str, Any] | None = None
        if reference.score is not None:
            current = bin_counts(counts, "s|", reference.score.size)
            score = feature_report(
                (model, version, "__score__"),
                reference.score,
                current,
                sketches.get("score"),
                self.calibrations,
                self.min_count,
            )
            score["quality"] = {"missing": int(counts.get("q|score|missing", 0))}
            self._drift(decisions, PREDICTION_DRIFT, model, version, "score", score)
        drifted = sorted(k for k, v in features.items() if v.get("drift"))
        report = {
            "model": model,
            "version": version,
            "start": start,
            "predictions": n,
            "reference": reference.source,
            "features": features,
            "score": score,
            "drifted": drifted,
            "firing": sorted(
                str(key[2])
                for key in self.streaks.firing
                if isinstance(key, tuple) and key[:2] == (model, version)
            ),
        }
        return report, decisions

    def _drift(
        self,
        decisions: list[Decision],
        rule: str,
        model: str,
        version: str,
        name: str,
        report: Mapping[str, Any],
    ) -> None:
        if not report.get("judged"):
            return
        verdict = self.streaks.observe((model, version, name), bool(report.get("drift")))
        if verdict is None:
            return
        what = "the score" if rule == PREDICTION_DRIFT else f"feature {name!r}"
        summary = (
            f"model {model} {version}: {what} drifted: Jensen-Shannon {report['js']:.4f} > "
            f"threshold {report['threshold']:.4f} (PSI {report['psi']:.3f}, n={report['n']})"
            if verdict == "fire"
            else f"model {model} {version}: {what} back within its threshold"
        )
        decisions.append(
            Decision(
                rule,
                model,
                version,
                f"feature:{name}" if rule == FEATURE_DRIFT else "score",
                verdict,
                summary,
                {
                    "value": report["js"],
                    "threshold": report["threshold"],
                    "window": report["n"],
                    "psi": report["psi"],
                },
            )
        )

    def performance_window(
        self, model: str, version: str, start: int, metrics: Mapping[str, Any]
    ) -> list[Decision]:
        """A performance drop of one window's accuracy against the earlier windows."""
        confusion = metrics.get("confusion") or {}
        labels = float(sum(confusion.values()))
        if labels < self.min_count:
            return []
        correct = float(confusion.get("tp", 0) + confusion.get("tn", 0))
        accuracy = correct / labels
        seen_labels, seen_correct = self.baseline.get((model, version), (0.0, 0.0))
        out: list[Decision] = []
        if seen_labels >= self.min_count:
            base = seen_correct / seen_labels
            stderr = math.sqrt(max(base * (1 - base), 1e-6) / labels)
            floor = base - 3 * stderr
            verdict = self.performance.observe((model, version, "accuracy"), accuracy < floor)
            if verdict is not None:
                out.append(
                    Decision(
                        PERFORMANCE_DROP,
                        model,
                        version,
                        "accuracy",
                        verdict,
                        f"model {model} {version}: accuracy {accuracy:.3f} in the window at "
                        f"{start} (n={int(labels)}) below {floor:.3f} (baseline {base:.3f})"
                        if verdict == "fire"
                        else f"model {model} {version}: accuracy back to {accuracy:.3f}",
                        {"value": accuracy, "baseline": base, "threshold": floor, "window": labels},
                    )
                )
        self.baseline[(model, version)] = (seen_labels + labels, seen_correct + correct)
        return out
