"""Auditing evaluations on model organisms. Filled in by the evaluation work."""
