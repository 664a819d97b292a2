"""Benchmarks (run from the repository root: `.venv/bin/python -m bench.<name>`)."""
