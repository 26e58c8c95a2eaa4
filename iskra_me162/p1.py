"""The six values of a Domoticz P1 Smart Meter device: U1;U2;R1;R2;CONS;PROD.

This renders the derive stage's :class:`~iskra_me162.derive.values.Values`; it computes no
energy or power of its own. U1/U2 (R1/R2) are the import (export) counters of tariff 1 and 2 in
whole Wh; CONS/PROD the import and export power in whole W:

* Counters: the tariff registers 1.8.1/1.8.2 (2.8.1/2.8.2) when the meter sends either, a
  missing one being 0; otherwise the total in U1 (R1) and 0 in U2 (R2); a meter that counts no
  export sends R1 = R2 = 0. A meter that repeats its total in 1.8.1 with 1.8.2 = 0 (MT175 and
  most SML meters) therefore gives U1 = 1.8.1, never 1.8.0 on top. Tariffs 3 and up have no
  place in P1.
* Counters are rounded down to whole Wh (never ahead of the meter; rounding down keeps them
  monotonic), power to the nearest whole W.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from iskra_me162.derive.values import Energy, Values
from iskra_me162.errors import SinkError


@dataclass(frozen=True)
class P1Values:
    """The six numbers of a P1 update; construction fails on anything but non-negative ints."""

    u1: int
    u2: int
    r1: int
    r2: int
    cons: int
    prod: int

    def __post_init__(self) -> None:
        for name in ("u1", "u2", "r1", "r2", "cons", "prod"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"P1 value {name} must be a non-negative int, got {value!r}")

    @property
    def svalue(self) -> str:
        """``U1;U2;R1;R2;CONS;PROD`` as Domoticz's udevice wants it."""
        return f"{self.u1};{self.u2};{self.r1};{self.r2};{self.cons};{self.prod}"


def p1_values(values: Values, swap_tariffs: bool = False) -> P1Values | None:
    """The P1 update for ``values``, or None when the readout has no power figure (P1 needs
    one; ``values.power_missing`` says why). SinkError when no correct update can be made."""
    if values.import_energy is None:
        raise SinkError("the readout has no import energy register (1.8.0, 1.8.1 or 1.8.2)")
    if values.import_power is None or values.export_power is None:
        return None
    u1, u2 = _pair(values.import_energy)
    r1, r2 = (0, 0) if values.export_energy is None else _pair(values.export_energy)
    if swap_tariffs:
        u1, u2, r1, r2 = u2, u1, r2, r1
    return P1Values(
        u1=u1,
        u2=u2,
        r1=r1,
        r2=r2,
        cons=whole_w(values.import_power.watts),
        prod=whole_w(values.export_power.watts),
    )


def _pair(energy: Energy) -> tuple[int, int]:
    tariff1, tariff2 = energy.tariff_wh(1), energy.tariff_wh(2)
    if tariff1 is None and tariff2 is None:
        return whole_wh(energy.total_wh), 0
    return whole_wh(tariff1 or Decimal(0)), whole_wh(tariff2 or Decimal(0))


def whole_wh(wh: Decimal) -> int:
    return int(wh.to_integral_value(rounding=ROUND_FLOOR))


def whole_w(watts: Decimal) -> int:
    return max(int(watts.to_integral_value(rounding=ROUND_HALF_UP)), 0)
