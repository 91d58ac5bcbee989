"""Anomaly detectors as pure objects, one module per family: they see values and return
flags, nothing else. Each documents its parameters (a frozen dataclass with defaults) and
its detection delay, and every flag carries its evidence (value, baseline, threshold,
window) so a person can judge it without a dashboard."""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from processors.detectors.failslow import FailSlowDetector, FailSlowParams
from processors.detectors.gradients import GradientDetector, GradientParams
from processors.detectors.leaks import LeakDetector, LeakParams
from processors.detectors.logs import ErrorBurstDetector, ErrorBurstParams
from processors.detectors.nonfinite import (
    NonFiniteDetector,
    NonFiniteOrigin,
    NonFiniteOriginParams,
)
from processors.detectors.ranks import (
    DesyncDetector,
    DesyncParams,
    DPMismatchDetector,
    DPMismatchParams,
    LivenessDetector,
    LivenessParams,
    StragglerDetector,
    StragglerParams,
)
from processors.detectors.resources import ResourceDetector, ResourceParams
from processors.detectors.slowdown import SlowdownDetector, SlowdownParams
from processors.detectors.spike import SpikeDetector, SpikeParams
from processors.detectors.telemetry import TelemetryLossDetector, TelemetryLossParams
from processors.detectors.throughput import ThroughputDetector, ThroughputParams
from processors.detectors.trends import (
    DivergenceDetector,
    DivergenceParams,
    OverfittingDetector,
    OverfittingParams,
    PlateauDetector,
    PlateauParams,
)
from processors.flags import Flag
from stepstream.errors import ConfigError

#: The parameters of each detector by the name `STEPSTREAM_DETECTOR_PARAMS` uses (the
#: detector's `name`, the rule of its flags). tests/unit/test_config_errors.py checks
#: that the stages read exactly these names.
DETECTOR_PARAMS: dict[str, type] = {
    "spike": SpikeParams,
    "gradients": GradientParams,
    "plateau": PlateauParams,
    "divergence": DivergenceParams,
    "overfitting": OverfittingParams,
    "throughput_regression": ThroughputParams,
    "resource_pressure": ResourceParams,
    "memory_leak": LeakParams,
    "error_burst": ErrorBurstParams,
    "telemetry_loss": TelemetryLossParams,
    "straggler": StragglerParams,
    "fail_slow": FailSlowParams,
    "job_slowdown": SlowdownParams,
    "dp_mismatch": DPMismatchParams,
    "rank_desync": DesyncParams,
    "liveness": LivenessParams,
    "nonfinite_origin": NonFiniteOriginParams,
}


def _suggest(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def check_detector_params(params: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ConfigError, in one line, for a detector name or parameter that
    `STEPSTREAM_DETECTOR_PARAMS` names but no detector has (the stages would ignore an
    unknown detector and fail on an unknown parameter); the message lists the valid ones."""
    detectors = sorted(DETECTOR_PARAMS)
    for name, overrides in params.items():
        if name not in DETECTOR_PARAMS:
            raise ConfigError(
                f"detector_params: no detector {name!r}{_suggest(name, detectors)}; fix "
                f"STEPSTREAM_DETECTOR_PARAMS, valid detectors: {', '.join(detectors)}"
            )
        fields = sorted(f.name for f in dataclasses.fields(DETECTOR_PARAMS[name]))
        for key in overrides:
            if key not in fields:
                raise ConfigError(
                    f"detector_params: {name} has no parameter {key!r}{_suggest(key, fields)}; "
                    f"fix STEPSTREAM_DETECTOR_PARAMS, valid parameters of {name}: "
                    f"{', '.join(fields)}"
                )


__all__ = [
    "DETECTOR_PARAMS",
    "DPMismatchDetector",
    "DPMismatchParams",
    "DesyncDetector",
    "DesyncParams",
    "DivergenceDetector",
    "DivergenceParams",
    "ErrorBurstDetector",
    "ErrorBurstParams",
    "FailSlowDetector",
    "FailSlowParams",
    "Flag",
    "GradientDetector",
    "GradientParams",
    "LeakDetector",
    "LeakParams",
    "LivenessDetector",
    "LivenessParams",
    "NonFiniteDetector",
    "NonFiniteOrigin",
    "NonFiniteOriginParams",
    "OverfittingDetector",
    "OverfittingParams",
    "PlateauDetector",
    "PlateauParams",
    "ResourceDetector",
    "ResourceParams",
    "SlowdownDetector",
    "SlowdownParams",
    "SpikeDetector",
    "SpikeParams",
    "StragglerDetector",
    "StragglerParams",
    "TelemetryLossDetector",
    "TelemetryLossParams",
    "ThroughputDetector",
    "ThroughputParams",
    "check_detector_params",
]
