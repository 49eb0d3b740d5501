"""Metrics and benchmark suites over generated videos (no model needed to score)."""
