"""Benchmarks (not tests): ``ci-gate bench <name>``. One module per benchmark, each exposing
``register(bench_app)``."""
