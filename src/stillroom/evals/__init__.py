"""Evaluations: datasets from stored completions, graders, runs and comparisons."""
