"""Benchmarks of the training hub's methods, one module per family (run by ``bench.methods``).

Each module exposes ``benchmark(quick) -> dict`` (JSON-ready numbers) and
``markdown(result) -> str`` (the compact BENCHMARKS.md section); the trainers
they call live in ``server/training/``.
"""
