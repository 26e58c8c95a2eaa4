"""``benchmarks/run [--quick] [--only NAME ...] [--plot PNG]``: run the suite, print a table, write
benchmarks/results/<timestamp>.json.

Exit status: 0 when every benchmark ran (missed goals are reported, never a failure: timings on a
shared CI machine prove nothing), 1 when one broke or a decoder disagreed with its peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import REPO, Section, machine, table

RESULTS = REPO / "benchmarks" / "results"


def _benchmarks() -> dict[str, Callable[[bool], Section]]:
    # Imported here so that --help works before the package's dependencies are installed.
    from benchmarks import cycle, daemon_runs, decoders, health_week, live_power, sml_cpu

    # Order matters: the timing-sensitive ones run first, on an otherwise quiet machine.
    return {
        "cycle": cycle.run,
        "livepower": live_power.run,
        "startup": daemon_runs.startup,
        "imports": daemon_runs.import_costs,
        "decoders": decoders.run,
        "idle": daemon_runs.idle_cpu,
        "sml": sml_cpu.run,
        "memory": daemon_runs.memory,
        "week": health_week.run,
    }


NAMES = ("cycle", "livepower", "startup", "imports", "decoders", "idle", "sml", "memory", "week")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="few iterations (CI: checks that it works, ~2 min)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, metavar="NAME", help=f"run only these: {NAMES}"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/...)")
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw cycle time vs wire limit (needs cycle)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    benchmarks = _benchmarks()
    load_before = os.getloadavg()
    sections: dict[str, Section] = {}
    started = datetime.now(UTC)
    for name in args.only or NAMES:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            sections[name] = benchmarks[name](args.quick)
        except Exception as error:  # noqa: BLE001 - report it, go on with the rest
            section = Section(name)
            section.errors.append(f"{type(error).__name__}: {error}")
            traceback.print_exc()
            sections[name] = section
        sections[name].details["took_s"] = round(time.monotonic() - began, 1)

    print(table(list(sections.values())))
    document = {
        "started": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        # Other work on the machine skews timings: the 1-minute load average before and after.
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "sections": {name: section.as_dict() for name, section in sections.items()},
    }
    output = args.output or RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"\nresults: {output}")
    if args.plot is not None:
        from benchmarks.plot import plot_cycles

        plot_cycles(document, args.plot)
        print(f"plot: {args.plot}")
    missed = [f for s in sections.values() for f in s.figures if f.met is False]
    if missed:
        print("goals missed: " + ", ".join(f"{f.name} ({f.value:.3g} {f.unit})" for f in missed))
    broken = [name for name, section in sections.items() if section.errors]
    if broken:
        print(f"BROKEN: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
