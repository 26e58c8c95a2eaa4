"""Readouts and values made by hand for unit tests of the derive stage and the sinks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from iskra_me162.derive import Deriver, Values
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.readout import MeterIdentity, Readout

METER = MeterIdentity("ISK", "ME162-0033", "12345678")
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_readout(
    monotonic: float,
    registers: dict[str, str | tuple[str, str | None]],
    *,
    identity: MeterIdentity = METER,
    wall_time: datetime | None = None,
) -> Readout:
    """A readout from ``{"1.8.0": "123.456"}`` (kWh / kW by C group) or ``{"1.8.0": (v, unit)}``."""
    readings = []
    for code, spec in registers.items():
        if isinstance(spec, tuple):
            value, unit = spec
        else:
            value, unit = spec, ("kW" if ".7." in code else "kWh")
        readings.append(Reading(ObisCode.parse(code), Decimal(value), unit, f"{value}*{unit}"))
    return Readout(
        identity=identity,
        readings=tuple(readings),
        wall_time=wall_time or START + timedelta(seconds=monotonic),
        monotonic=monotonic,
    )


def make_deriver(**overrides: object) -> Deriver:
    """A deriver as the daemon builds it for a 60 s interval, no state file, a fixed boot."""
    settings: dict[str, object] = {"min_span_s": 30.0, "max_span_s": 900.0, "boot_id": "boot-a"}
    settings.update(overrides)
    return Deriver(**settings)  # type: ignore[arg-type]


def derive_pair(
    registers: dict[str, str | tuple[str, str | None]],
    earlier: dict[str, str | tuple[str, str | None]] | None = None,
    seconds: float = 60.0,
) -> Values:
    """The values of ``registers`` read ``seconds`` after ``earlier`` (default: the same)."""
    deriver = make_deriver()
    deriver.derive(make_readout(1000.0, earlier if earlier is not None else registers))
    return deriver.derive(make_readout(1000.0 + seconds, registers))
