"""Turn readouts into the six values of a P1 smart meter: U1;U2;R1;R2;CONS;PROD.

U1/U2 (R1/R2) are the import (export) counters of tariff 1 and 2 in whole Wh; CONS/PROD are
the power drawn from (fed into) the grid in whole W. The rules, per direction:

* Counters: the tariff registers 1.8.1/1.8.2 (2.8.1/2.8.2) when the meter sends either, a
  missing one being 0; otherwise the total 1.8.0 (2.8.0) in U1 (R1) and 0 in U2 (R2); a meter
  that counts no export sends R1 = R2 = 0. A meter that repeats its total in 1.8.1 with 1.8.2 = 0
  (MT175 and most SML meters) therefore gives U1 = 1.8.1, never 1.8.0 on top. Tariffs 3 and up
  have no place in P1 and are not sent (they still count for power when there is no total).
* Power: the meter's own registers when it has them: 1.7.0/2.7.0, or the signed 16.7.0 split
  into CONS (positive) and PROD (negative, sent as a positive number). Otherwise the change of
  the total import (export) energy, 1.8.0 (2.8.0) or the sum of the tariff registers, between
  two used readouts divided by their monotonic time difference (see :mod:`iskra_me162.state`).

A readout whose set of energy registers differs from that of the readouts before it (a meter that
now and then leaves a line out) is *held back*: not used, nothing sent, because a missing tariff
register would otherwise go out as a counter of 0. Only when the meter sends the new set
:data:`SHAPE_CONFIRMATIONS` times in a row is it taken as the meter's new normal.

A readout is *used* when it is published or observed; power always comes from the previous used
readout, not the previous *sent* one. So when Domoticz was down for an hour, the first successful
push shows the power of the last readout interval (what the house draws now), not the average over
the hour; the counters, being cumulative, catch up in the same push.

Energy stays ``Decimal`` until the last step (0008048.375 kWh is exactly 8048375 Wh). Counters
are rounded down to whole Wh (never ahead of the meter; rounding down keeps them monotonic),
power to the nearest whole W.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from iskra_me162.errors import SinkError
from iskra_me162.readout import Readout
from iskra_me162.state import (
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_MAX_POWER_W,
    CounterSnapshot,
    DeltaPower,
    Rebase,
    SavedState,
    StateStore,
    power_between,
)

log = logging.getLogger(__name__)

_TARIFFS = range(1, 10)  # x.8.1 .. x.8.9; only 1 and 2 are sent, all count for power
# Readouts in a row with the same changed set of energy registers before it counts as the
# meter's new normal (a reconfigured meter) rather than a glitch (a line left out once).
SHAPE_CONFIRMATIONS = 3


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

    @property
    def counters(self) -> tuple[int, int, int, int]:
        return (self.u1, self.u2, self.r1, self.r2)


@dataclass(frozen=True)
class MeterCounters:
    """The counters of one readout: the P1 pairs in whole Wh and the exact totals for power."""

    u1: int
    u2: int
    r1: int
    r2: int
    import_wh: Decimal
    export_wh: Decimal | None  # None: the meter counts no export
    sources: str  # registers behind import_wh|export_wh, e.g. "1.8.0|2.8.1+2.8.2" or "1.8.0|-"


@dataclass(frozen=True)
class _Direction:
    tariff1: Decimal
    tariff2: Decimal
    total: Decimal
    source: str


def read_counters(readout: Readout, swap_tariffs: bool = False) -> MeterCounters:
    """The counters of ``readout``; SinkError when it cannot make a correct P1 update."""
    imported = _direction(readout, "1.8")
    if imported is None:
        raise SinkError("the readout has no import energy register (1.8.0, 1.8.1 or 1.8.2)")
    exported = _direction(readout, "2.8")
    u1, u2 = _whole_wh(imported.tariff1), _whole_wh(imported.tariff2)
    r1, r2 = (
        (0, 0) if exported is None else (_whole_wh(exported.tariff1), _whole_wh(exported.tariff2))
    )
    if swap_tariffs:
        u1, u2, r1, r2 = u2, u1, r2, r1
    return MeterCounters(
        u1=u1,
        u2=u2,
        r1=r1,
        r2=r2,
        import_wh=imported.total,
        export_wh=None if exported is None else exported.total,
        sources=f"{imported.source}|{'-' if exported is None else exported.source}",
    )


def register_power(readout: Readout) -> tuple[Decimal | None, Decimal | None]:
    """(CONS, PROD) in W from the meter's power registers; None where it has none.

    1.7.0/2.7.0 win over 16.7.0. A negative 1.7.0 without a 2.7.0 is read as a signed sum (some
    meters do that); other negative values are clamped to 0, never sent.
    """
    consumed = _power(readout, "1.7.0")
    produced = _power(readout, "2.7.0")
    signed = _power(readout, "16.7.0")
    if signed is None and produced is None and consumed is not None and consumed < 0:
        signed, consumed = consumed, None
    if consumed is None and signed is not None:
        consumed = max(signed, Decimal(0))
    if produced is None and signed is not None:
        produced = max(-signed, Decimal(0))
    return (
        None if consumed is None else max(consumed, Decimal(0)),
        None if produced is None else max(produced, Decimal(0)),
    )


def snapshot_of(readout: Readout, counters: MeterCounters) -> CounterSnapshot:
    return CounterSnapshot(
        meter_id=readout.identity.meter_id,
        sources=counters.sources,
        import_wh=counters.import_wh,
        export_wh=counters.export_wh,
        monotonic=readout.monotonic,
        wall_time=readout.wall_time,
    )


@dataclass(frozen=True)
class _Evaluation:
    values: P1Values | None
    snapshot: CounterSnapshot
    rebase: Rebase | None


class P1Calculator:
    """Readouts in, P1 values out, with the power baseline and the state file behind it.

    ``preview`` has no side effects. ``use`` consumes a readout (it becomes the baseline for the
    next power figure). ``record_sent`` stores a delivered update in the state file. Feeding the
    same readout twice is harmless: the second time gives the same answer.
    """

    def __init__(
        self,
        *,
        swap_tariffs: bool = False,
        state: StateStore | None = None,
        max_power_w: int = DEFAULT_MAX_POWER_W,
        max_interval_s: float | None = DEFAULT_MAX_INTERVAL_S,
    ) -> None:
        if max_power_w <= 0 or (max_interval_s is not None and max_interval_s <= 0):
            raise ValueError("max_power_w and max_interval_s must be positive")
        self._swap_tariffs = swap_tariffs
        self._state = state
        self._max_power_w = max_power_w
        self._max_interval_s = max_interval_s
        self._baseline: CounterSnapshot | None = None
        self._baseline_values: P1Values | None = None
        self._shape: frozenset[str] | None = None  # energy registers of the used readouts
        self._new_shape: frozenset[str] | None = None  # a different set seen lately ...
        self._new_shape_seen = 0  # ... this many times in a row
        self._no_baseline_reason = "there is no earlier readout (cold start)"
        saved = state.load() if state is not None else None
        if saved is not None and state is not None:
            if saved.boot_id and saved.boot_id == state.boot_id:
                self._baseline = saved.snapshot
                log.info(
                    "power continues from the state file (readout of %s)",
                    saved.snapshot.wall_time.isoformat(timespec="seconds"),
                )
            else:
                self._no_baseline_reason = (
                    "the state file is from before a reboot, its time cannot be compared"
                )

    def preview(self, readout: Readout) -> P1Values | None:
        """What ``use`` would return now (None: power waits for a second readout, or the
        readout would be held back)."""
        if not self._shape_accepted(energy_registers(readout), commit=False):
            return None
        return self._evaluate(readout).values

    def use(self, readout: Readout) -> P1Values | None:
        """Consume ``readout``: its values (None: waiting) and it becomes the power baseline.

        A held-back readout (see the module documentation) gives None and changes nothing.
        """
        read_counters(readout, self._swap_tariffs)  # an unusable readout fails before any change
        if not self._shape_accepted(energy_registers(readout), commit=True):
            return None
        evaluation = self._evaluate(readout)
        rebase = evaluation.rebase
        if rebase is not None and (rebase.warn or evaluation.values is None):
            waiting = "; power waits for the next readout" if evaluation.values is None else ""
            log.log(
                logging.WARNING if rebase.warn else logging.INFO,
                "power from counter deltas starts afresh: %s%s",
                rebase.reason,
                waiting,
            )
        self._baseline = evaluation.snapshot
        self._baseline_values = evaluation.values
        return evaluation.values

    def record_sent(self, readout: Readout, values: P1Values) -> None:
        """``values`` of ``readout`` reached the sink: keep them in the state file."""
        if self._state is None:
            return
        snapshot = snapshot_of(readout, read_counters(readout, self._swap_tariffs))
        self._state.save(
            SavedState(snapshot=snapshot, sent=values.counters, boot_id=self._state.boot_id)
        )

    def _shape_accepted(self, shape: frozenset[str], *, commit: bool) -> bool:
        """Whether a readout with energy registers ``shape`` may be used; ``commit`` records
        it (and logs the start and end of a hold-back)."""
        if self._shape is None or shape == self._shape:
            if commit:
                if self._new_shape is not None:
                    log.warning(
                        "the meter sends its usual energy registers again (%s)", _names(shape)
                    )
                self._shape, self._new_shape, self._new_shape_seen = shape, None, 0
            return True
        seen = self._new_shape_seen + 1 if shape == self._new_shape else 1
        if seen >= SHAPE_CONFIRMATIONS:
            if commit:
                log.warning(
                    "the meter now sends the energy registers %s instead of %s "
                    "(%d readouts in a row): taking that as its new normal",
                    _names(shape),
                    _names(self._shape),
                    seen,
                )
                self._shape, self._new_shape, self._new_shape_seen = shape, None, 0
            return True
        if commit:
            if shape != self._new_shape:
                missing = _names(self._shape - shape)
                extra = _names(shape - self._shape)
                log.warning(
                    "readout held back, nothing sent: its energy registers differ from the "
                    "earlier readouts' (missing: %s; new: %s), and a missing counter is never "
                    "sent as 0; used again when the meter sends %s, or this new set %d times "
                    "in a row",
                    missing,
                    extra,
                    _names(self._shape),
                    SHAPE_CONFIRMATIONS,
                )
            self._new_shape, self._new_shape_seen = shape, seen
        return False

    def _evaluate(self, readout: Readout) -> _Evaluation:
        counters = read_counters(readout, self._swap_tariffs)
        snapshot = snapshot_of(readout, counters)
        if snapshot == self._baseline:  # the same readout again
            return _Evaluation(self._baseline_values, snapshot, None)
        delta: DeltaPower | Rebase
        if self._baseline is None:
            delta = Rebase(self._no_baseline_reason, False)
        else:
            delta = power_between(
                self._baseline,
                snapshot,
                max_power_w=self._max_power_w,
                max_interval_s=self._max_interval_s,
            )
        rebase = delta if isinstance(delta, Rebase) else None
        if rebase is not None and rebase.warn:
            # A counter that went backwards or jumped beyond what the meter can measure is a
            # glitch or a new meter: its counters are not sent even when the meter reports its
            # power itself. The readout becomes the new base; the next consistent one is sent.
            return _Evaluation(None, snapshot, rebase)
        consumed, produced = register_power(readout)
        if produced is None and counters.export_wh is None:
            produced = Decimal(0)  # the meter counts no export: there is none
        if isinstance(delta, DeltaPower):
            consumed = delta.import_w if consumed is None else consumed
            produced = delta.export_w if produced is None else produced
        if consumed is None or produced is None:
            return _Evaluation(None, snapshot, rebase)
        values = P1Values(
            u1=counters.u1,
            u2=counters.u2,
            r1=counters.r1,
            r2=counters.r2,
            cons=_whole_w(consumed),
            prod=_whole_w(produced),
        )
        return _Evaluation(values, snapshot, rebase)


def energy_registers(readout: Readout) -> frozenset[str]:
    """Which current energy registers (1.8.0 .. 1.8.9, 2.8.0 .. 2.8.9) ``readout`` holds."""
    return frozenset(
        cde
        for prefix in ("1.8", "2.8")
        for number in (0, *_TARIFFS)
        if readout.get(cde := f"{prefix}.{number}") is not None
    )


def _names(registers: frozenset[str]) -> str:
    return ", ".join(sorted(registers)) or "none"


def _direction(readout: Readout, prefix: str) -> _Direction | None:
    total = _energy(readout, f"{prefix}.0")
    tariffs = {n: wh for n in _TARIFFS if (wh := _energy(readout, f"{prefix}.{n}")) is not None}
    if total is None and not tariffs:
        return None
    if total is not None:
        power_total, source = total, f"{prefix}.0"
    else:
        power_total = sum(tariffs.values(), Decimal(0))
        source = "+".join(f"{prefix}.{n}" for n in tariffs)
    zero = Decimal(0)
    if 1 in tariffs or 2 in tariffs:
        return _Direction(tariffs.get(1, zero), tariffs.get(2, zero), power_total, source)
    return _Direction(power_total, zero, power_total, source)


def _energy(readout: Readout, cde: str) -> Decimal | None:
    reading = readout.get(cde)
    if reading is None:
        return None
    wh = readout.energy_wh(cde)
    if wh is None:
        raise SinkError(f"register {cde} has unit {reading.unit!r}, not an energy unit")
    if wh < 0:
        raise SinkError(f"register {cde} is negative; a counter cannot be, readout not sent")
    return wh


def _power(readout: Readout, cde: str) -> Decimal | None:
    reading = readout.get(cde)
    if reading is None:
        return None
    watts = readout.power_w(cde)
    if watts is None:
        log.debug("register %s has unit %r, not a power unit; ignored", cde, reading.unit)
    return watts


def _whole_wh(wh: Decimal) -> int:
    return int(wh.to_integral_value(rounding=ROUND_FLOOR))


def _whole_w(watts: Decimal) -> int:
    return max(int(watts.to_integral_value(rounding=ROUND_HALF_UP)), 0)
