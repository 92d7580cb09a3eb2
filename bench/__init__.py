"""chanprune's benchmarks: scripts that measure, and write JSON under ``bench/results/``.

Run them as modules from the repository root, e.g. ``python -m bench.scoreboard --quick``; what every script
shares (checkpoint, test subset, BatchNorm re-estimation, fine-tune, resumable results, versions) lives in
:mod:`bench.harness`. ``python -m bench.make_readme`` turns the committed JSON into the README's tables.
"""
