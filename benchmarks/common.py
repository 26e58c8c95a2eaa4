"""What every benchmark shares: result records, goals, the machine, /proc readers, the table."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO.parent / "shared" / "testdata"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Figure:
    """One measured number, with the goal it is held against (if any) and how it was taken."""

    name: str
    value: float | None
    unit: str
    goal: str = ""  # e.g. "<= 1.10"; empty: informational
    met: bool | None = None  # None: no goal, or not measured
    note: str = ""


@dataclass
class Section:
    """The figures of one benchmark plus its raw data for the JSON file."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # broken, not slow: these fail the run

    def add(
        self, name: str, value: float | None, unit: str, goal: str = "", note: str = ""
    ) -> Figure:
        met = None if not goal or value is None else _meets(value, goal)
        figure = Figure(name, value, unit, goal, met, note)
        self.figures.append(figure)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": [asdict(figure) for figure in self.figures],
            "details": self.details,
            "errors": self.errors,
        }


def _meets(value: float, goal: str) -> bool:
    operator, _, limit = goal.partition(" ")
    bound = float(limit)
    if operator == "<=":
        return value <= bound
    if operator == ">=":
        return value >= bound
    if operator == "<":
        return value < bound
    raise ValueError(f"unknown goal {goal!r}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the JSON file and docs/performance.rst."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                info["cpu"] = value.strip()
                break
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        info["memory_mb"] = round(int(first[1]) / 1024)
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "iskra_me162"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["commit"] = commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


# --- /proc -------------------------------------------------------------------------------------


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and friends of ``pid`` in kB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize", "RssAnon", "RssFile", "Threads"):
            values[key] = int(rest.split()[0])
    return values


def cpu_ticks_s(pid: int) -> float:
    """utime + stime of ``pid`` (all threads) in seconds: the process accounting, 10 ms steps."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_exact_s(pid: int) -> float:
    """CPU time of ``pid`` summed over its threads from the scheduler (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


# --- output ------------------------------------------------------------------------------------


def _format(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if unit == "x":  # ratios: the third decimal is where the cycle gaps show
        return f"{value:.3f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(sections: list[Section]) -> str:
    """The figures as a plain-text table, one block per section."""
    lines = []
    for section in sections:
        lines.append("")
        lines.append(f"== {section.title}")
        width = max((len(figure.name) for figure in section.figures), default=10)
        for figure in section.figures:
            verdict = ""
            if figure.met is not None:
                verdict = "ok  " if figure.met else "MISS"
            goal = f"goal {figure.goal}" if figure.goal else ""
            shown = _format(figure.value, figure.unit)
            row = (
                f"  {figure.name:<{width}}  {shown:>10} {figure.unit:<10}"
                f" {verdict:<4} {goal:<12} {figure.note}"
            )
            lines.append(row.rstrip())
        for error in section.errors:
            lines.append(f"  ERROR: {error}")
    return "\n".join(lines)
