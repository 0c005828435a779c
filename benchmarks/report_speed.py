"""Wall time of a build's report (``write_build_report``) with the charts drawn in one process
against two (the main process and a chart helper process), in alternating rounds.

    python benchmarks/report_speed.py <build folder> [--rounds 4]

Each round runs the report in a fresh process (imports included, as a build's merge step runs
it), first with the helper switched off, then on (the order alternates per round), and checks
that both wrote the same PNG bytes. The build folder's report is rewritten in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path

def main():
    t0 = time.perf_counter()
    import maskgen.audit.api as api
    if sys.argv[2] == "off":
        api.figure_helper = lambda: None
    api.write_build_report(Path(sys.argv[1]), reproduce="benchmark")
    print(json.dumps({"seconds": time.perf_counter() - t0}))

if __name__ == "__main__":
    main()
"""


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((out / "report").glob("*.png")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {"off": [], "on": []}
    digests: dict[str, set[str]] = {"off": set(), "on": set()}
    for r in range(args.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            p = subprocess.run([sys.executable, "-c", CHILD, str(args.build), mode], capture_output=True, text=True,
                               check=True)
            times[mode].append(json.loads(p.stdout.strip().splitlines()[-1])["seconds"])
            digests[mode].add(_digest(args.build))
            print(f"round {r + 1} helper {mode}: {times[mode][-1]:.2f} s", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"report, median of {args.rounds}: one process {off:.2f} s, with the chart helper {on:.2f} s "
          f"({off / on:.2f}x); same PNG bytes: {digests['off'] == digests['on'] and len(digests['on']) == 1}")


if __name__ == "__main__":
    main()
