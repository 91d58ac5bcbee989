"""Rule files: YAML validated into Rule objects, with errors that name the line.

rules:
  - name: loss-too-high
    condition: mean(loss, 50 steps) > 4
    for: 20 steps
    keep_firing_for: 30s
    severity: warning
    selector: {run: "prod-*", rank: "*"}
    labels: {team: research}
    summary: "mean loss {{ value }} > {{ threshold }} on rank {{ rank }} of {{ run }}"
    action: scale_lr:0.5
  - name: nan
    detector: nonfinite
    severity: critical
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from processors.alerting.conditions import Condition, parse_condition
from processors.alerting.durations import Span, parse_span
from processors.alerting.lifecycle import Timing
from stepstream.contract import Severity
from stepstream.errors import ConfigError

ACTION_PATTERN = re.compile(r"^(stop|checkpoint|scale_lr:\d+(\.\d+)?)$")
SELECTOR_KEYS = frozenset({"run", "rank", "metric"})


class RuleSpec(BaseModel):
    """One rule as written in a rule file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
    detector: str | None = None
    condition: str | None = None
    selector: dict[str, str] = Field(default_factory=dict)
    for_: str | float = Field("0s", alias="for")
    keep_firing_for: str | float = "0s"
    repeat_interval: str | float = "1h"
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = ""
    description: str = ""
    action: str | None = None

    @field_validator("for_", "keep_firing_for", "repeat_interval")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        parse_span(value)
        return value

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - SELECTOR_KEYS
        if unknown:
            raise ValueError(f"unknown selector keys {sorted(unknown)}; use run, rank, metric")
        return value

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is not None:
            parse_condition(value)
        return value

    @field_validator("action")
    @classmethod
    def _action(cls, value: str | None) -> str | None:
        if value is not None and not ACTION_PATTERN.match(value):
            raise ValueError(f"action {value!r}: use stop, checkpoint or scale_lr:<factor>")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RuleSpec:
        if (self.detector is None) == (self.condition is None):
            raise ValueError("a rule needs exactly one of 'detector' or 'condition'")
        if parse_span(self.repeat_interval).unit == "steps":
            raise ValueError("repeat_interval is a time (e.g. 1h), not steps")
        return self


@dataclass(frozen=True)
class Rule:
    """A validated rule, ready to evaluate."""

    name: str
    severity: Severity
    timing: Timing
    detector: str | None = None
    condition: Condition | None = None
    selector: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    description: str = ""
    action: str | None = None
    line: int | None = None


def _to_rule(spec: RuleSpec, line: int | None) -> Rule:
    repeat: Span = parse_span(spec.repeat_interval)
    return Rule(
        name=spec.name,
        severity=spec.severity,
        timing=Timing(
            for_=parse_span(spec.for_),
            keep_firing_for=parse_span(spec.keep_firing_for),
            repeat_interval_s=repeat.amount,
        ),
        detector=spec.detector,
        condition=parse_condition(spec.condition) if spec.condition else None,
        selector=spec.selector,
        labels=spec.labels,
        summary=spec.summary,
        description=spec.description,
        action=spec.action,
        line=line,
    )


def _plain(node: yaml.Node, lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> Any:
    """A YAML node as Python values, recording the 1-based line of every path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = key_node.value
            out[key] = _plain(value_node, lines, (*path, key))
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, lines, (*path, i)) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_of(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int:
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return 1


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """Validate a rule file's text; ConfigError lists every problem as ``source:line: ...``."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        context = getattr(exc, "context_mark", None)
        opened = f" ({exc.context} at line {context.line + 1})" if context else ""
        raise ConfigError(
            f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}{opened}"
        ) from exc
    if root is None:
        return []
    lines: dict[tuple[Any, ...], int] = {}
    doc = _plain(root, lines, ())
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise ConfigError(f"{source}:1: expected a mapping with a 'rules:' list")
    problems: list[str] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(doc["rules"]):
        path = ("rules", index)
        line = _line_of(lines, path)
        if not isinstance(item, dict):
            problems.append(f"{source}:{line}: each rule must be a mapping")
            continue
        try:
            spec = RuleSpec.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                at = _line_of(lines, (*path, *err["loc"]))
                field_name = ".".join(str(p) for p in err["loc"]) or "rule"
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{source}:{at}: {field_name}: {message}")
            continue
        if spec.name in seen:
            problems.append(
                f"{source}:{line}: duplicate rule name {spec.name!r} "
                f"(first at line {seen[spec.name]})"
            )
            continue
        seen[spec.name] = line
        rules.append(_to_rule(spec, line))
    if problems:
        raise ConfigError("\n".join(problems))
    return rules


def load_rules(path: Path) -> list[Rule]:
    """Read and validate a rule file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read rule file {path}: {exc.strerror}") from exc
    return parse_rules(text, str(path))
