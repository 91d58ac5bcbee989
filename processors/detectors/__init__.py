"""Anomaly detectors as pure objects, one module per family: they see values and return
flags, nothing else. Each documents its parameters (a frozen dataclass with defaults) and
its detection delay, and every flag carries its evidence (value, baseline, threshold,
window) so a person can judge it without a dashboard."""

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

__all__ = [
    "DPMismatchDetector",
    "DPMismatchParams",
    "DesyncDetector",
    "DesyncParams",
    "DivergenceDetector",
    "DivergenceParams",
    "ErrorBurstDetector",
    "ErrorBurstParams",
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
    "SpikeDetector",
    "SpikeParams",
    "StragglerDetector",
    "StragglerParams",
    "TelemetryLossDetector",
    "TelemetryLossParams",
    "ThroughputDetector",
    "ThroughputParams",
]
