"""Which meter the simulator pretends to be: identification and the lines of its data readout.

``me162`` follows what ISKRA ME162 owners have published (testdata SOURCES.md section C): ident
``/ISK5ME162-0033``, short OBIS codes, import and export in two tariffs, no power register.
``mt174`` follows the layout of the ISKRA MT174 capture in the test data (``1-0:...*255``
codes, four tariffs, power registers 1.7.0 / 2.7.0) without its billing history. ``simple``
is a synthetic meter without tariffs (1.8.0 / 2.8.0 only). The readouts are synthetic: the
layout is the real one, the numbers are the simulator's own counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from iskra_me162.errors import ConfigError
from iskra_me162.simulator.counters import REGISTER_MODULUS, Registers


class Quantity(Enum):
    """What a readout line shows."""

    SERIAL = "serial"
    IMPORT_TOTAL = "A+"
    EXPORT_TOTAL = "A-"
    IMPORT_TARIFF = "A+T"  # with a tariff number
    EXPORT_TARIFF = "A-T"
    IMPORT_POWER = "P+"
    EXPORT_POWER = "P-"
    ERROR = "F.F"


@dataclass(frozen=True)
class LineSpec:
    """One line of the data block: OBIS code as the meter spells it, and what it shows."""

    code: str
    quantity: Quantity
    tariff: int = 0  # 1-based, only for *_TARIFF quantities


@dataclass(frozen=True)
class Profile:
    """A meter model: ident parts, number of tariffs and the data lines in readout order."""

    name: str
    manufacturer: str  # three letters; a lower-case third letter means 20 ms reaction time
    baud_char: str  # the fastest rate it offers, '0'..'6'
    model: str
    tariffs: int
    lines: tuple[LineSpec, ...]
    error_digits: int = 7

    def ident(self, baud_char: str | None = None) -> str:
        """The identification message without the leading '/' and trailing CR LF."""
        return f"{self.manufacturer}{baud_char or self.baud_char}{self.model}"

    @property
    def reaction_time(self) -> float:
        """Seconds between a request and the answer, as IEC 62056-21 ties it to the ident."""
        return 0.02 if self.manufacturer[2].islower() else 0.2

    def data_lines(self, serial: str, registers: Registers) -> tuple[tuple[str, str], ...]:
        """``(code, value)`` per line, value being the text between the brackets."""
        return tuple((spec.code, _value(spec, serial, registers)) for spec in self.lines)


def _energy(wh: int) -> str:
    wh %= REGISTER_MODULUS
    return f"{wh // 1000:07d}.{wh % 1000:03d}*kWh"


def _power(watts: int) -> str:
    return f"{watts // 1000}.{watts % 1000:03d}*kW"


def _value(spec: LineSpec, serial: str, registers: Registers) -> str:
    quantity = spec.quantity
    if quantity is Quantity.SERIAL:
        return serial
    if quantity is Quantity.IMPORT_TOTAL:
        return _energy(registers.import_total_wh)
    if quantity is Quantity.EXPORT_TOTAL:
        return _energy(registers.export_total_wh)
    if quantity is Quantity.IMPORT_TARIFF:
        return _energy(registers.import_wh[spec.tariff - 1])
    if quantity is Quantity.EXPORT_TARIFF:
        return _energy(registers.export_wh[spec.tariff - 1])
    if quantity is Quantity.IMPORT_POWER:
        return _power(registers.import_w)
    if quantity is Quantity.EXPORT_POWER:
        return _power(registers.export_w)
    return "0" * 7  # F.F: no fatal error


def _energy_lines(prefix: str, suffix: str, tariffs: int) -> tuple[LineSpec, ...]:
    lines = [
        LineSpec(f"{prefix}1.8.0{suffix}", Quantity.IMPORT_TOTAL),
        *(
            LineSpec(f"{prefix}1.8.{t}{suffix}", Quantity.IMPORT_TARIFF, t)
            for t in range(1, tariffs + 1)
        ),
        LineSpec(f"{prefix}2.8.0{suffix}", Quantity.EXPORT_TOTAL),
        *(
            LineSpec(f"{prefix}2.8.{t}{suffix}", Quantity.EXPORT_TARIFF, t)
            for t in range(1, tariffs + 1)
        ),
    ]
    return tuple(lines)


ME162 = Profile(
    name="me162",
    manufacturer="ISK",
    baud_char="5",
    model="ME162-0033",
    tariffs=2,
    lines=(
        LineSpec("C.1.0", Quantity.SERIAL),
        LineSpec("0.0.0", Quantity.SERIAL),
        *_energy_lines("", "", 2),
        LineSpec("F.F", Quantity.ERROR),
    ),
)

_MT174_ENERGY = _energy_lines("1-0:", "*255", 4)
MT174 = Profile(
    name="mt174",
    manufacturer="ISk",
    baud_char="5",
    model="MT174-0001",
    tariffs=4,
    lines=(
        LineSpec("1-0:0.0.0*255", Quantity.SERIAL),
        LineSpec("0-0:C.1.0*255", Quantity.SERIAL),
        LineSpec("1-0:1.7.0*255", Quantity.IMPORT_POWER),
        *_MT174_ENERGY[:5],  # 1.8.0 .. 1.8.4
        LineSpec("1-0:2.7.0*255", Quantity.EXPORT_POWER),
        *_MT174_ENERGY[5:],  # 2.8.0 .. 2.8.4
        LineSpec("0-0:F.F.0*255", Quantity.ERROR),
    ),
)

SIMPLE = Profile(
    name="simple",
    manufacturer="SIM",
    baud_char="5",
    model="SIMPLE-1",
    tariffs=1,
    lines=(
        LineSpec("0.0.0", Quantity.SERIAL),
        LineSpec("1.8.0", Quantity.IMPORT_TOTAL),
        LineSpec("2.8.0", Quantity.EXPORT_TOTAL),
    ),
)

PROFILES: dict[str, Profile] = {profile.name: profile for profile in (ME162, MT174, SIMPLE)}


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown meter profile {name!r} (known: {known})") from None
