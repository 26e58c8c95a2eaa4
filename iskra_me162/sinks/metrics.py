"""``GET /metrics``: the values and the link's health in Prometheus' text format (issue 13).

Rendered with ``prometheus_client`` (Debian ``python3-prometheus-client``), imported only when
the HTTP endpoint is on, from the same :class:`~iskra_me162.sinks.http.PageContext` as the
status page: the values as ``/api/v1/readings`` serves them and the daemon's
:class:`~iskra_me162.health.HealthSnapshot`. Nothing is computed here that a sink could show
differently: every number is read off those two.

Names and units follow Prometheus' conventions: counters end in ``_total``, energy in Wh
(``_wh_total``, the unit of the meter's registers: exact, and what the Grafana panels show),
power in ``_watts``, times in ``_seconds`` since the epoch. Energy and power are left out
while the reading is stale or before the first one: a scrape then sees the series vanish
(Prometheus marks it stale) instead of a last value that looks current.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from iskra_me162.derive.values import Energy, Values
from iskra_me162.health import FAILURE_KINDS, HealthSnapshot
from iskra_me162.sinks.http import PageContext

PREFIX = "iskra_me162"


def render(context: PageContext) -> tuple[str, bytes]:
    """The metrics page for ``context``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(context))
    return CONTENT_TYPE_LATEST, generate_latest(registry)


class _Collector:
    """One scrape's worth of metrics from one context (prometheus_client's collector API)."""

    def __init__(self, context: PageContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        context = self._context
        if context.values is not None and not context.stale:
            yield from _values(context.values)
        if context.age_s is not None:
            age = GaugeMetricFamily(
                f"{PREFIX}_reading_age_seconds", "Age of the latest reading the endpoint serves"
            )
            age.add_metric([], context.age_s)
            yield age
        if context.health is not None:
            yield from _health(context.health)


def _values(values: Values) -> Iterator[Metric]:
    identity = values.identity
    info = GaugeMetricFamily(
        f"{PREFIX}_meter_info",
        "The meter read: manufacturer, model and serial number (always 1)",
        labels=["manufacturer", "model", "serial"],
    )
    info.add_metric([identity.manufacturer, identity.model, identity.serial], 1)
    yield info
    energy = CounterMetricFamily(
        f"{PREFIX}_energy_wh",
        "Energy counters of the meter in Wh, by direction and tariff (total: x.8.0)",
        labels=["direction", "tariff"],
    )
    for direction, counted in (("import", values.import_energy), ("export", values.export_energy)):
        for tariff, wh in _registers(counted):
            energy.add_metric([direction, tariff], float(wh))
    yield energy
    power = GaugeMetricFamily(
        f"{PREFIX}_power_watts",
        "Power in W: import and export (never negative) and net (import minus export)",
        labels=["direction", "source"],
    )
    for direction, figure in (
        ("import", values.import_power),
        ("export", values.export_power),
        ("net", values.net_power),
    ):
        if figure is not None:
            power.add_metric([direction, figure.source], float(figure.watts))
    yield power


def _registers(energy: Energy | None) -> Iterator[tuple[str, Decimal]]:
    if energy is None:
        return
    yield "total", energy.total_wh
    for tariff, wh in energy.tariffs_wh:
        yield str(tariff), wh


def _health(health: HealthSnapshot) -> Iterator[Metric]:
    readouts = CounterMetricFamily(
        f"{PREFIX}_readouts", "Good readouts (or frames) since the start"
    )
    readouts.add_metric([], health.readouts)
    yield readouts
    failures = CounterMetricFamily(
        f"{PREFIX}_read_failures",
        "Failed reads since the start, by kind (checksum, timeout, port, rejected, other)",
        labels=["kind"],
    )
    for kind in FAILURE_KINDS:
        failures.add_metric([kind], health.failures.get(kind, 0))
    yield failures
    checksum = CounterMetricFamily(
        f"{PREFIX}_checksum_errors",
        "Messages dropped for a wrong BCC (mode C) or CRC (SML) since the start",
    )
    checksum.add_metric([], health.checksum_errors)
    yield checksum
    fallbacks = CounterMetricFamily(
        f"{PREFIX}_highspeed_fallbacks", "High-speed readouts that failed and fell back to 300 Bd"
    )
    fallbacks.add_metric([], health.fallbacks)
    yield fallbacks
    if health.last_readout is not None:
        last = GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds", "When the last good readout came"
        )
        last.add_metric([], health.last_readout.timestamp())
        yield last
    if health.baudrate is not None:
        baud = GaugeMetricFamily(f"{PREFIX}_baud_rate", "Baud rate of the last good readout")
        baud.add_metric([], health.baudrate)
        yield baud
    today = GaugeMetricFamily(
        f"{PREFIX}_today_energy_wh",
        "Energy since local midnight (or since the daemon started that day), in Wh",
        labels=["direction"],
    )
    for direction, wh in (("import", health.today_import_wh), ("export", health.today_export_wh)):
        if wh is not None:
            today.add_metric([direction], float(wh))
    yield today
    yield from _sinks(health)


def _sinks(health: HealthSnapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        f"{PREFIX}_sink_up", "1 while the sink's last push worked, else 0", labels=["sink"]
    )
    errors = CounterMetricFamily(
        f"{PREFIX}_sink_errors", "Failed pushes since the start", labels=["sink"]
    )
    pushes = CounterMetricFamily(
        f"{PREFIX}_sink_pushes", "Successful pushes since the start", labels=["sink"]
    )
    last = GaugeMetricFamily(
        f"{PREFIX}_sink_last_success_timestamp_seconds",
        "When the sink's last successful push was",
        labels=["sink"],
    )
    connected = GaugeMetricFamily(
        f"{PREFIX}_sink_connected",
        "1 while a sink with a connection (MQTT) was connected at its last push, else 0",
        labels=["sink"],
    )
    for sink in health.sinks:
        up.add_metric([sink.name], 1 if sink.ok else 0)
        if sink.connected is not None:
            connected.add_metric([sink.name], 1 if sink.connected else 0)
        errors.add_metric([sink.name], sink.failures)
        pushes.add_metric([sink.name], sink.pushes)
        if sink.last_ok is not None:
            last.add_metric([sink.name], sink.last_ok.timestamp())
    yield from (up, connected, errors, pushes, last)
