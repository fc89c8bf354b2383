"""Benchmarks run by `make bench` (`python -m bench [NAME...]`); each bench_*.py has run()."""
