"""Every benchmark in one command (``make bench``), each step resumable, so a rerun continues where it stopped.

    python -m bench.run_all                 # the recovery protocol on the zoo, then the README tables
    python -m bench.run_all --quick         # the smoke checks only (minutes)
    python -m bench.run_all --dry-run       # print the commands and stop
    python -m bench.run_all --steps all     # also the studies on the shipped checkpoints (hours on a CPU)

Steps run in order as ``python -m bench.<script> ...`` from the repository root; a step that fails stops the run
(its finished rows are kept). The scoreboard's fine-tunes use the GPU when there is one.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from bench.harness import ROOT

ZOO = "zoo"
# name -> (group, argv). "protocol": the scoreboard's recovery protocol on the retrained zoo, then the README;
# "studies": the per-method studies on the shipped checkpoints; "quick": the smoke checks.
STEPS = {
    "scoreboard_a": ("protocol", ["bench.scoreboard", "--zoo", ZOO, "--protocol", "a", "--supervise"]),
    "scoreboard_b": ("protocol", ["bench.scoreboard", "--zoo", ZOO, "--protocol", "b", "--supervise",
                                  "--finetune-device", "auto"]),
    "effective_resnet56": ("studies", ["bench.effective_filters", "resnet56"]),
    "recovery_resnet56": ("studies", ["bench.recovery", "resnet56"]),
    "recovery_vgg16_bn": ("studies", ["bench.recovery", "vgg16_bn"]),
    "trp_resnet20": ("studies", ["bench.trp", "resnet20"]),
    "scoreboard_original": ("studies", ["bench.scoreboard", "--supervise"]),
    "fuzz_surgery": ("studies", ["bench.fuzz_surgery"]),
    "deploy": ("studies", ["bench.deploy"]),
    "partition": ("studies", ["bench.partition"]),
    "scoreboard_quick": ("quick", ["bench.scoreboard", "--quick"]),
    "recovery_quick": ("quick", ["bench.recovery", "resnet56", "--quick", "--methods", "l1,cp"]),
    "effective_quick": ("quick", ["bench.effective_filters", "resnet20", "--quick", "--parts", "sweep"]),
    "readme": ("protocol", ["bench.make_readme"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="only the smoke checks")
    p.add_argument("--steps", default="protocol",
                   help="comma-separated groups or step names: protocol (default), studies, quick, all, "
                        "or any of " + ", ".join(STEPS))
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)
    wanted = {"quick"} if args.quick else set(args.steps.split(","))
    if "all" in wanted:
        wanted = {"protocol", "studies"}
    unknown = wanted - {g for g, _ in STEPS.values()} - set(STEPS)
    if unknown:
        print(f"unknown step(s) {sorted(unknown)}; see --help", file=sys.stderr)
        return 2
    steps = [(n, [sys.executable, "-m", *argv]) for n, (g, argv) in STEPS.items() if n in wanted or g in wanted]
    for name, cmd in steps:
        print(f"[run_all] {name}: {' '.join(cmd[1:])}", flush=True)
        if args.dry_run:
            continue
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            print(f"[run_all] {name} exited {rc}; rerun to continue (finished rows are kept)", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
