"""The README's two commands, timed as a new user meets them: a fresh clone, no .venv, an empty data cache.

    python -m bench.fresh_clone                 # each command in its own fresh clone of HEAD (temp folders)
    python -m bench.fresh_clone --keep-cache    # reuse ~/.cache/chanprune instead of downloading the data again

Writes bench/results/fresh_clone.json: per command its wall time, exit status, and the last lines it printed;
for `make run` also the before/after record the demo wrote (runs/demo/record.json). The machine should be quiet
while this runs (the load average at start and end is recorded), since both commands time themselves against it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from chanprune._atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results" / "fresh_clone.json"


def timed(cmd: list[str], cwd: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return {"command": " ".join(cmd), "wall_seconds": round(wall, 1), "exit_status": proc.returncode, "tail": lines[-15:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-cache", action="store_true", help="use the existing data cache instead of an empty one")
    args = ap.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    load_start = os.getloadavg()
    results = {}
    for target in ("run", "test"):
        with tempfile.TemporaryDirectory(prefix="chanprune-fresh-") as tmp:
            clone, cache = Path(tmp) / "clone", Path(tmp) / "cache"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "OMP_NUM_THREADS", "CHANPRUNE_CACHE")}
            if not args.keep_cache:
                env["CHANPRUNE_CACHE"] = str(cache)
            results[target] = timed(["make", target], clone, env)
            if target == "run":  # the before/after table the demo printed, as JSON
                record = clone / "runs" / "demo" / "record.json"
                results[target]["record"] = json.loads(record.read_text()) if record.exists() else None
    run, test = results["run"], results["test"]
    result = {"commit": head, "data_cache": "the existing data cache" if args.keep_cache else "an empty data cache (the data fetched from npm and converted)",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "note": "each command ran in its own fresh clone, so each time includes creating .venv and installing.",
              "make_run": run, "make_test": test, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(OUT, json.dumps(result, indent=1))
    print(f"make run: {run['wall_seconds']:.0f} s (exit {run['exit_status']}); "
          f"make test: {test['wall_seconds']:.0f} s (exit {test['exit_status']}); wrote {OUT.relative_to(ROOT)}")
    return 0 if run["exit_status"] == 0 and test["exit_status"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
