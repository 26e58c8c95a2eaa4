"""The derive stage with live power: polled counters get their power from step timing only,
and a meter counts one direction at a time.

The readouts are the ones ``LiveIecMeter`` makes (a whole readout, then one per poll with
``polled`` set), from a simulated meter whose counters are ``floor(energy)`` in Wh at a known
load; the oracle is that load, never the code's own output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from decimal import Decimal

from iskra_me162.derive import FROM_COUNTERS, Values
from iskra_me162.derive.values import FROM_STEPS
from iskra_me162.readout import Readout
from tests.readouts import make_deriver, make_readout

POLL_S = 0.5
ANSWER_S = 0.12  # 2.8.0 is asked this long after 1.8.0, as at 9600 Bd


def energy_wh(schedule: list[tuple[float, float]], t: float) -> float:
    """Wh used from 0 to ``t`` s at the load ``[(from_s, watts), ...]`` (sorted, from 0)."""
    used = 0.0
    ends = [start for start, _watts in schedule[1:]] + [math.inf]
    for (start, watts), end in zip(schedule, ends, strict=True):
        if t > start:
            used += watts * (min(t, end) - start) / 3600
    return used


def counter_kwh(schedule: list[tuple[float, float]], t: float, base_wh: int) -> str:
    """The register as a meter with a 1 Wh resolution shows it at ``t``."""
    return f"{(base_wh + math.floor(energy_wh(schedule, t) + 1e-9)) / 1000:.3f}"


def run(
    imports: list[tuple[float, float]],
    exports: list[tuple[float, float]],
    seconds: float,
) -> Iterator[tuple[float, Values]]:
    """(time, values) of a whole readout at 0 s and then a poll every 0.5 s from 1.5 s on.

    ``min_span_s`` 5 s (an update interval of 10 s): counter change would give a figure soon,
    so a test sees it if the stage falls back to it.
    """
    stage = make_deriver(min_span_s=5.0)
    base = 1000.0

    def readout(t: float, polled: bool) -> Readout:
        registers = {
            "1.8.0": counter_kwh(imports, t, 32927960),
            "2.8.0": counter_kwh(exports, t + ANSWER_S, 13465000),
        }
        made = make_readout(base + t, registers)
        if not polled:
            return made
        return dataclasses.replace(
            made, polled=(("1.8.0", base + t), ("2.8.0", base + t + ANSWER_S))
        )

    yield 0.0, stage.derive(readout(0.0, polled=False))
    t = 1.5
    while t <= seconds:
        yield t, stage.derive(readout(t, polled=True))
        t += POLL_S


def within(found: Decimal | None, expected: float, share: float) -> bool:
    return found is not None and abs(float(found) - expected) <= share * expected


def test_cold_start_publishes_no_counter_change_only_step_power():
    """A steady 300 W from the start: nothing until two steps are seen (12 s apart), never a
    figure from a few seconds of counter change, then within 5 % throughout."""
    seen = list(run([(0, 300)], [(0, 0)], 60))
    figures = [(t, v) for t, v in seen if v.import_power is not None]
    assert figures, "no import power within 60 s at 300 W"
    assert all(v.import_power.source == FROM_STEPS for _t, v in figures)
    assert all(within(v.import_power.watts, 300, 0.05) for _t, v in figures), [
        (t, v.import_power.watts) for t, v in figures if not within(v.import_power.watts, 300, 0.05)
    ]
    first = figures[0][0]
    assert first <= 2 * 12 + 1.5 + POLL_S  # two steps at 300 W, from the first poll
    before = [v for t, v in seen if 0 < t < first]
    assert before and all(v.net_power is None for v in before)
    assert "1.8.0: " in before[-1].power_missing and "step timing" in before[-1].power_missing
    last = figures[-1][1]
    assert last.export_power.watts == 0 and last.export_power.source == FROM_STEPS
    assert last.net_power.source == FROM_STEPS and within(last.net_power.watts, 300, 0.05)


def test_export_only_gives_import_zero_and_negative_net():
    seen = list(run([(0, 0)], [(0, 500)], 40))
    last = seen[-1][1]
    assert last.import_power.watts == 0 and last.import_power.source == FROM_STEPS
    assert within(last.export_power.watts, 500, 0.05)
    assert within(-last.net_power.watts, 500, 0.05)


def test_both_counters_stepping_each_figure_stands():
    """Not one direction at a time (a change of direction, or a meter that counts per phase):
    neither figure is set to 0."""
    last = list(run([(0, 1000)], [(0, 1500)], 40))[-1][1]
    assert within(last.import_power.watts, 1000, 0.05)
    assert within(last.export_power.watts, 1500, 0.05)


def test_after_the_load_falls_the_bound_and_zero_export():
    """3 kW, then off at 20 s: the import figure comes down as the bound (never above what no
    step for t seconds allows), export stays 0 (it never stepped), net follows import."""
    seen = list(run([(0, 3000), (20, 0)], [(0, 0)], 80))
    for t, values in seen:
        if t < 32 or values.import_power is None:
            continue
        since = t - 20.0
        assert values.import_power.watts <= Decimal(3600) / Decimal(since - POLL_S)
        assert values.export_power.watts == 0
        assert values.net_power.watts == values.import_power.watts


def test_readouts_without_polls_still_get_counter_power():
    """A meter that refuses programming mode is read in readout mode: counter change as before."""
    stage = make_deriver(min_span_s=5.0)
    stage.derive(make_readout(1000.0, {"1.8.0": "1.000", "2.8.0": "0"}))
    values = stage.derive(make_readout(1010.0, {"1.8.0": "1.001", "2.8.0": "0"}))
    assert values.import_power.source == FROM_COUNTERS and values.import_power.watts == 360
