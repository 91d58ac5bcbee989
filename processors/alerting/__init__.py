"""Alerting logic, pure: rule files, the alert lifecycle, silences, inhibition, templates."""
