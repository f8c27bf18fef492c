"""Ranking metrics, unit-tested against hand-computed values."""
