"""Energy and power from a readout's own registers: pure functions, one rule for every sink.

Energy, per direction (import 1.8.x, export 2.8.x): the total x.8.0 when the meter sends it,
else the sum of its tariff registers x.8.1 .. x.8.9; the tariff registers as sent.

Power, when the meter has power registers: import 1.7.0, export 2.7.0, net (signed, positive
when importing) 16.7.0. Net is always import minus export, so a missing one of the three follows
from the other two: 16.7.0 alone splits by its sign; 1.7.0 with 16.7.0 gives export
1.7.0 - 16.7.0; 2.7.0 with 16.7.0 gives import 16.7.0 + 2.7.0. A negative 1.7.0 with neither
2.7.0 nor 16.7.0 is a signed sum (some meters send it so). Import and export power are never
negative: a negative value of a register that is not signed is read as 0.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from iskra_me162.derive.values import FROM_METER, Energy, Power
from iskra_me162.errors import ReadoutRejected
from iskra_me162.readout import Readout

log = logging.getLogger(__name__)

TARIFFS = range(1, 10)  # x.8.1 .. x.8.9
_ZERO = Decimal(0)


def energy_of(readout: Readout, direction: int) -> Energy | None:
    """The energy counters of ``direction`` (1 import, 2 export), or None when it has none.

    ReadoutRejected for an energy register that is not in an energy unit or is negative: a
    counter cannot be, and the readout must not reach any sink.
    """
    prefix = f"{direction}.8"
    total = _energy_wh(readout, f"{prefix}.0")
    tariffs = tuple(
        (number, wh)
        for number in TARIFFS
        if (wh := _energy_wh(readout, f"{prefix}.{number}")) is not None
    )
    if total is not None:
        return Energy(total, f"{prefix}.0", tariffs)
    if tariffs:
        source = "+".join(f"{prefix}.{number}" for number, _ in tariffs)
        return Energy(sum((wh for _, wh in tariffs), _ZERO), source, tariffs)
    return None


def energy_registers(readout: Readout) -> frozenset[str]:
    """Which current energy registers (1.8.0 .. 1.8.9, 2.8.0 .. 2.8.9) ``readout`` holds."""
    return frozenset(
        cde
        for prefix in ("1.8", "2.8")
        for number in (0, *TARIFFS)
        if readout.get(cde := f"{prefix}.{number}") is not None
    )


def register_power(readout: Readout) -> tuple[Power | None, Power | None, Power | None]:
    """(import, export, net) power from the meter's power registers; None where it has none."""
    importing = _power_w(readout, "1.7.0")
    exporting = _power_w(readout, "2.7.0")
    net = _power_w(readout, "16.7.0")
    names = {"import": "1.7.0", "export": "2.7.0", "net": "16.7.0"}
    if net is None and exporting is None and importing is not None and importing < 0:
        net, importing = importing, None  # a signed 1.7.0
        names["net"] = "1.7.0"
    if importing is not None and importing < 0:
        importing = _ZERO
    if exporting is not None and exporting < 0:
        exporting = _ZERO
    if net is not None:
        if importing is None and exporting is None:
            importing, exporting = max(net, _ZERO), max(-net, _ZERO)
            names["import"] = names["export"] = names["net"]
        elif importing is None:
            importing = max(net + exporting, _ZERO)  # type: ignore[operator]
            names["import"] = f"{names['net']}+2.7.0"
        elif exporting is None:
            exporting = max(importing - net, _ZERO)
            names["export"] = f"1.7.0-{names['net']}"
    elif importing is not None and exporting is not None:
        net = importing - exporting
        names["net"] = "1.7.0-2.7.0"
    return (
        _meter_power(importing, names["import"]),
        _meter_power(exporting, names["export"]),
        _meter_power(net, names["net"]),
    )


def _meter_power(watts: Decimal | None, registers: str) -> Power | None:
    return None if watts is None else Power(watts, FROM_METER, registers)


def _energy_wh(readout: Readout, cde: str) -> Decimal | None:
    reading = readout.get(cde)
    if reading is None:
        return None
    wh = readout.energy_wh(cde)
    if wh is None:
        raise ReadoutRejected(f"register {cde} has unit {reading.unit!r}, not an energy unit")
    if wh < 0:
        raise ReadoutRejected(f"register {cde} is negative, which a counter cannot be")
    return wh


def _power_w(readout: Readout, cde: str) -> Decimal | None:
    reading = readout.get(cde)
    if reading is None:
        return None
    watts = readout.power_w(cde)
    if watts is None:
        log.debug("register %s has unit %r, not a power unit; ignored", cde, reading.unit)
    return watts
