"""The daemon's record for the status page and /metrics: counts, kinds, bounded history."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from iskra_me162.derive.values import FROM_STEPS, Energy, Power, Values
from iskra_me162.errors import (
    ChecksumError,
    MeterTimeout,
    PortError,
    ProtocolError,
    ReadoutRejected,
)
from iskra_me162.health import BUCKET_S, HISTORY_BUCKETS, Health
from tests.readouts import START, make_readout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def values_at(seconds: float, import_wh: int, watts: int) -> Values:
    readout = make_readout(
        1000.0 + seconds, {"1.8.0": "1"}, wall_time=START + timedelta(seconds=seconds)
    )
    power = Power(Decimal(watts), FROM_STEPS, "1.8.0")
    return Values(
        readout=readout,
        import_energy=Energy(Decimal(import_wh), "1.8.0"),
        export_energy=None,
        import_power=power,
        export_power=Power(Decimal(0), FROM_STEPS, "2.8.0"),
        net_power=power,
    )


def test_failures_are_counted_by_kind_and_the_last_hour_drops_old_minutes():
    clock = Clock()
    health = Health(clock=clock)
    for error in (
        ChecksumError("BCC"),
        MeterTimeout("silent"),
        PortError("gone"),
        ReadoutRejected("held back"),
        ProtocolError("malformed"),
    ):
        health.readout_failed(error)
    health.readout_ok(baudrate=9600)
    snapshot = health.snapshot()
    assert snapshot.failures == {"checksum": 1, "timeout": 1, "port": 1, "rejected": 1, "other": 1}
    assert (snapshot.last_hour_ok, snapshot.last_hour_failed) == (1, 5)
    assert snapshot.last_error == "malformed" and snapshot.baudrate == 9600
    clock.now += 3600 + BUCKET_S
    health.readout_ok()
    later = health.snapshot()
    assert (later.last_hour_ok, later.last_hour_failed) == (1, 0)
    assert later.readouts == 2 and later.failures["checksum"] == 1  # totals stay


def test_checksum_errors_include_the_sml_meters_own_crc_count():
    health = Health(clock=Clock())
    health.readout_failed(ChecksumError("BCC"))
    health.readout_ok(meter_counters={"frames_ok": 10, "crc_errors": 3})
    assert health.snapshot().checksum_errors == 4


def test_power_history_is_per_minute_and_bounded_over_a_week():
    clock = Clock()
    health = Health(clock=clock)
    for step in range(7 * 24 * 60 * 2):  # a week, two readouts a minute
        clock.now += 30
        health.derived(values_at(step * 30, 1000 + step, 100 + step % 2 * 100))
    history = health.snapshot().history
    assert len(history) == HISTORY_BUCKETS
    assert len(health._power) == HISTORY_BUCKETS  # the buckets themselves stay bounded
    point = history[-1]
    assert (point.min_w, point.max_w, point.mean_w) == (100, 200, 150)
    assert history[0].start < history[-1].start


def test_todays_energy_counts_from_the_first_readout_of_the_day():
    clock = Clock()
    health = Health(clock=clock)
    health.derived(values_at(0, 5000, 300))
    health.derived(values_at(600, 5100, 300))
    snapshot = health.snapshot()
    assert snapshot.today_import_wh == 100 and snapshot.today_export_wh is None
    assert snapshot.today_since == START.astimezone()
    day = 24 * 3600
    health.derived(values_at(day, 9000, 300))  # the next day (START is noon: still one day on)
    health.derived(values_at(day + 60, 9050, 300))
    assert health.snapshot().today_import_wh == 50


def test_sink_states_keep_the_last_success_and_error():
    health = Health(clock=Clock())
    health.pushed("domoticz")
    health.pushed("domoticz", "HTTP 401: check domoticz_username")
    health.pushed("mqtt", connected=False)
    domoticz, mqtt = health.snapshot().sinks
    assert (domoticz.name, domoticz.ok, domoticz.pushes, domoticz.failures) == (
        "domoticz",
        False,
        1,
        1,
    )
    assert domoticz.last_ok is not None and "401" in domoticz.last_error
    assert mqtt.ok and mqtt.last_error == "" and mqtt.connected is False
    assert domoticz.connected is None  # no connection to speak of
