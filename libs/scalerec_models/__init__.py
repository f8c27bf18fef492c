"""Recommendation models: baselines (numpy), neural models (torch, imported only where trained), repository layout, serving bundles.

Importing this package never imports torch: the ranker and evaluator do not carry it."""
