"""Headwater's benchmark harness: ``python -m benchmarks`` (``make bench``).

See benchmarks/README.md for the workloads, how they are measured and the latest figures.
"""
