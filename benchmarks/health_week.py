"""A simulated week of the daemon's health record and pages: memory must stay flat.

The status page's chart and /metrics read :class:`iskra_me162.health.Health`, which the daemon
feeds with every readout for as long as it runs. A real week takes a week, so the record is fed
here in-process on a simulated clock: one readout a second (a push meter, or live power at the
HTTP endpoint's pace) for seven days, a failure now and then, a push per minute. Memory is the
Python heap the record holds (tracemalloc), after one day against after seven, and the pages are
rendered at the end from the week-old record (their size and time). The real daemon's RSS with
the page and the metrics on is in the memory benchmark.
"""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from benchmarks.common import Section
from iskra_me162.derive.values import FROM_STEPS, Energy, Power, Values
from iskra_me162.errors import ChecksumError
from iskra_me162.health import Health
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.readout import MeterIdentity, Readout
from iskra_me162.sinks.http import PageContext
from iskra_me162.sinks.pages import http_pages

DAY_S = 24 * 3600
METER = MeterIdentity("ISK", "ME162-0033", "12345678")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _values(second: int, start: datetime) -> Values:
    wh = Decimal(1_000_000 + second // 8)  # 450 W
    reading = Reading(ObisCode.parse("1.8.0"), wh / 1000, "kWh", f"{wh / 1000}*kWh")
    readout = Readout(METER, (reading,), start + timedelta(seconds=second), float(second))
    watts = Power(Decimal(400 + second % 100), FROM_STEPS, "1.8.0")
    return Values(
        readout=readout,
        import_energy=Energy(wh, "1.8.0"),
        export_energy=None,
        import_power=watts,
        export_power=Power(Decimal(0), FROM_STEPS, "2.8.0"),
        net_power=watts,
    )


def run(quick: bool) -> Section:
    days = 2 if quick else 7
    section = Section(f"A simulated {days}-day run of the health record and pages (in-process)")
    clock = _Clock()
    start = datetime(2026, 1, 5, tzinfo=UTC)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        health = Health(clock=clock)
        at_day: dict[int, int] = {}
        began = time.process_time()
        for second in range(days * DAY_S):
            clock.now = float(second)
            if second % 3600 == 1800:
                health.readout_failed(ChecksumError("BCC wrong"))
            health.readout_ok(baudrate=9600)
            values = _values(second, start)
            health.derived(values)
            if second % 60 == 0:
                health.pushed("domoticz")
            if second % DAY_S == DAY_S - 1:
                at_day[second // DAY_S + 1] = tracemalloc.get_traced_memory()[0] - baseline
        cpu = time.process_time() - began
    finally:
        tracemalloc.stop()
    first, last = at_day[1], at_day[days]
    section.add("health record after day 1", first / 1024, "KiB")
    section.add(f"health record after day {days}", last / 1024, "KiB")
    section.add(f"growth day 1 -> {days}", (last - first) / 1024, "KiB", goal="<= 64")
    section.add(
        "CPU per readout fed in", cpu / (days * DAY_S) * 1e6, "us", note="readout_ok + derived"
    )
    snapshot = health.snapshot()
    section.add("chart points after the run", len(snapshot.history), "", goal="<= 1440")
    context = PageContext(values=values, age_s=0.5, stale=False, health=snapshot)
    for path, page in sorted(http_pages().items()):
        began = time.perf_counter()
        _content_type, body = page(context)
        took = time.perf_counter() - began
        section.add(f"GET {path}: body", len(body) / 1024, "KiB")
        section.add(f"GET {path}: render time", took * 1000, "ms")
    section.details = {"traced_bytes_by_day": at_day}
    return section
