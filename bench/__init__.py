"""Benchmarks, run as scripts: `.venv/bin/python bench/intake.py` (see bench/README.md)."""
