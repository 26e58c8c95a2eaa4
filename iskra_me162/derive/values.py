"""What the derive stage hands to every sink: the values of one readout, computed once.

A sink renders these (Domoticz as a P1 svalue, the HTTP endpoint as JSON, MQTT as a state
message, the log as a line) and computes nothing itself, so every sink shows the same energy and
the same power for the same readout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from iskra_me162.readout import MeterIdentity, Readout

# Where a power figure came from.
FROM_METER = "meter"  # the meter's own power register(s)
FROM_COUNTERS = "counters"  # the change of an energy counter over time
FROM_STEPS = "steps"  # the timing of a polled counter's steps (live power, derive/steps.py)


def wh_to_kwh(wh: Decimal) -> Decimal:
    """``wh`` in kWh, exact (``scaleb`` moves the decimal point and never rounds): the one
    conversion every sink that shows kWh uses."""
    return wh.scaleb(-3)


@dataclass(frozen=True, slots=True)
class Energy:
    """One direction's energy counters (import 1.8.x or export 2.8.x) in Wh, exact.

    ``total_wh`` is the total register (x.8.0) or, when the meter sends none, the sum of its
    tariff registers; ``source`` names the registers behind it (``"1.8.0"``,
    ``"1.8.1+1.8.2"``). ``tariffs_wh`` holds the tariff registers as the meter sent them.
    """

    total_wh: Decimal
    source: str
    tariffs_wh: tuple[tuple[int, Decimal], ...] = ()

    @property
    def total_kwh(self) -> Decimal:
        return wh_to_kwh(self.total_wh)

    def tariff_wh(self, number: int) -> Decimal | None:
        """Tariff register ``number`` (1 for x.8.1) in Wh, or None when the meter sent none."""
        for tariff, wh in self.tariffs_wh:
            if tariff == number:
                return wh
        return None

    @property
    def has_tariffs(self) -> bool:
        """Whether the meter really counts per tariff: two tariff registers or more have
        counted.

        Many meters (ISKRA MT175 and most SML meters) repeat the total in tariff 1 and send
        tariff 2 as 0; others (ZPA GH305) put everything in tariff 2. Such tariff registers say
        nothing the total does not, and publishing them as sensors of their own invites counting
        the same energy twice. A dual-tariff meter whose second tariff has never counted yet
        looks the same until it does.
        """
        return sum(1 for _, wh in self.tariffs_wh if wh != 0) >= 2


@dataclass(frozen=True, slots=True)
class Power:
    """A power figure in W and where it came from: exact as the meter sent it, or whole watts
    from counter change.

    ``source`` is :data:`FROM_METER`, :data:`FROM_COUNTERS` or :data:`FROM_STEPS`; ``registers``
    names them
    (``"1.7.0"``, ``"16.7.0"``, ``"1.8.0"``; ``""`` for an export power of 0 on a meter that
    counts no export). ``span_s`` is, for power from counters, the time the change was measured
    over.
    """

    watts: Decimal
    source: str
    registers: str
    span_s: float | None = None


@dataclass(frozen=True, slots=True)
class Values:
    """Everything the sinks publish for one verified readout.

    ``import_energy`` is None when the readout has no import energy register; ``export_energy``
    is None when the meter counts no export. ``import_power`` and ``export_power`` are never
    negative; ``net_power`` is import minus export (the meter's signed 16.7.0 when it sends
    one). A power that cannot be known for this readout is None and ``power_missing`` says why;
    it is never guessed.
    """

    readout: Readout
    import_energy: Energy | None
    export_energy: Energy | None
    import_power: Power | None
    export_power: Power | None
    net_power: Power | None
    power_missing: str = ""

    @property
    def identity(self) -> MeterIdentity:
        return self.readout.identity

    @property
    def wall_time(self) -> datetime:
        """When the readout arrived (UTC)."""
        return self.readout.wall_time

    @property
    def monotonic(self) -> float:
        """``time.monotonic()`` when the readout arrived (for ages: the wall clock jumps)."""
        return self.readout.monotonic

    @property
    def has_power(self) -> bool:
        return self.import_power is not None and self.export_power is not None
