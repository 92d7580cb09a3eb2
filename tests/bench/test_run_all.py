"""bench/run_all.py: `make bench` runs steps that exist."""
from __future__ import annotations

import importlib.util


def test_every_step_is_a_module_of_the_bench_package(capsys):
    from bench import run_all

    assert run_all.main(["--dry-run", "--steps", "all"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == sum(g in ("protocol", "studies") for g, _ in run_all.STEPS.values())
    for _, argv in run_all.STEPS.values():
        assert importlib.util.find_spec(argv[0]) is not None, argv[0]
    assert run_all.main(["--dry-run", "--steps", "nonsense"]) == 2
