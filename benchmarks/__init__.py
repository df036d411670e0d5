"""Benchmarks: each prints figures; run as `python3 -m benchmarks.bench_<name>` as root."""
