"""Speed and memory benchmarks behind `python tools/benchmark.py suite=NAME`: one module per suite, each with
`run(**options) -> {"rows": [...], ...}`."""
