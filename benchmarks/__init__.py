"""The benchmarks: scripts that measure the package and write `benchmarks/results/`.

Each runs as `python benchmarks/NAME.py ...` (the command its results file records) or as
`python -m benchmarks.NAME ...` from the repository's root; what they share lives in the
library, `sparsecircuits.benchmarking`.
"""
