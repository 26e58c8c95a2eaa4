"""A complete, checksum-verified set of readings from one meter at one moment.

This is what a protocol hands to the rest of the daemon and what every sink consumes. It also
knows how to express energy in Wh and power in W whatever unit the meter used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from iskra_me162.obis import Reading

# Factors to Wh / W. IEC 62056-21 meters that send no unit (EMH eHZ, "013925.5*") mean kWh
# on energy registers and kW on power registers: that is the convention of every such meter
# we know of, so ``None`` and ``""`` map to the "k" factor.
_ENERGY_TO_WH = {
    "wh": Decimal(1),
    "kwh": Decimal(1000),
    "mwh": Decimal(1_000_000),
    "": Decimal(1000),
}
_POWER_TO_W = {"w": Decimal(1), "kw": Decimal(1000), "mw": Decimal(1_000_000), "": Decimal(1000)}


@dataclass(frozen=True)
class MeterIdentity:
    """Who the meter says it is.

    ``manufacturer`` is the three-letter flag (``ISK``); ``model`` the identification text
    (``ME162-0033``) or SML model string; ``serial`` the meter's serial number or SML server id
    when it sends one (``""`` otherwise).
    """

    manufacturer: str
    model: str
    serial: str = ""

    @property
    def number(self) -> str:
        """The meter's number as printed on it.

        An SML server id of 10 bytes is the DIN 43863-5 meter id: a type byte (``0a``; ``09`` in
        the 2010 edition, which meters still send), medium, manufacturer flag, fabrication
        block, serial: ``0a 01 49534b 00 04812d55`` on the wire is ``1ISK0075574613`` on the
        meter's front. Anything else as it was sent.
        """
        serial = self.serial
        if len(serial) == 20:
            try:
                raw = bytes.fromhex(serial)
            except ValueError:
                return serial
            flag = raw[2:5]
            if raw[0] in (0x09, 0x0A) and flag.isalpha() and flag.isascii():
                serial_number = int.from_bytes(raw[6:], "big")
                return f"{raw[1]}{flag.decode('ascii')}{raw[5]:02d}{serial_number:08d}"
        return serial or self.meter_id

    @property
    def meter_id(self) -> str:
        """A stable, filename- and topic-safe name: the serial when known, else the model."""
        base = self.serial or f"{self.manufacturer}-{self.model}"
        return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in base) or "meter"


@dataclass(frozen=True)
class Readout:
    """All registers of one good readout (IEC) or frame (SML).

    ``wall_time`` is UTC (for displays and the HTTP endpoint); ``monotonic`` is
    ``time.monotonic()`` when it arrived (for power from counter deltas: the wall clock jumps).
    ``polled`` is empty for a whole readout; with live power (register polling in programming
    mode) it names the registers read on their own for this readout, each with the monotonic
    time its answer arrived (``(("1.8.0", 12.25), ("2.8.0", 12.48))``): the other readings are
    those of the last whole readout or earlier polls.
    """

    identity: MeterIdentity
    readings: tuple[Reading, ...]
    wall_time: datetime
    monotonic: float
    polled: tuple[tuple[str, float], ...] = ()

    def get(self, cde: str) -> Reading | None:
        """The current electricity register ``cde`` (``"1.8.0"``), or None when absent."""
        return self._current.get(cde)

    @functools.cached_property
    def _current(self) -> dict[str, Reading]:
        """The first reading with a value that ``means`` each C.D.E: the derive stage asks
        about 50 times per readout (each tariff of each direction), live power twice a second."""
        current: dict[str, Reading] = {}
        for reading in self.readings:
            cde = reading.code.cde
            if reading.value is not None and cde not in current and reading.code.means(cde):
                current[cde] = reading
        return current

    def energy_wh(self, cde: str) -> Decimal | None:
        """Register ``cde`` in Wh, or None if absent or not an energy unit."""
        return _scaled(self.get(cde), _ENERGY_TO_WH)

    def power_w(self, cde: str) -> Decimal | None:
        """Register ``cde`` in W, or None if absent or not a power unit."""
        return _scaled(self.get(cde), _POWER_TO_W)


def _scaled(reading: Reading | None, factors: dict[str, Decimal]) -> Decimal | None:
    if reading is None or reading.value is None:
        return None
    factor = factors.get((reading.unit or "").lower())
    if factor is None:
        return None
    return reading.value * factor
