"""Power from the change of the energy counters over time, for meters without power registers.

The ISKRA ME162 sends only counters: its power is the change of the import (export) counter
divided by the time it took. That time is always a ``time.monotonic()`` difference: the wall
clock jumps (NTP, a Pi without RTC booting in 1970), CLOCK_MONOTONIC does not, and as it counts
from boot a value stored by an earlier process of the same boot is still comparable (the state
file stores the boot id with it).

A counter moves in steps (1 Wh on the ME162), so a change over a short time says little: 1 Wh
in 8 s reads as 450 W, 2 Wh as 900 W. Power is therefore only computed over at least
``min_span_s`` (half the update interval): from the newest earlier readout that is at least that
much older, or not at all for this readout. It is never guessed.

Anything that would make a figure negative or absurd (counter backwards, another meter, other
registers, a jump no household connection can deliver) *rejects* the readout: the counters are
not trusted, the window starts afresh from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

# 100 kW is above any household or small-business connection (3 x 125 A at 230 V is 86 kW; the
# usual 3 x 25..63 A is 17..44 kW), so no real reading is rejected, while a misread digit or a
# meter swap (thousands of kWh at once) is always caught.
DEFAULT_MAX_POWER_W = 100_000
# Snapshots in the window are kept at least min_span_s / THINNING apart (the newest replaces the
# one before it when they are closer): a push meter sends a frame a second whatever the update
# interval, and a baseline a little older than min_span_s is as good. So a window holds about
# THINNING + 2 snapshots; MAX_SNAPSHOTS bounds what a state file may bring.
THINNING = 16
MAX_SNAPSHOTS = 128


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """The energy counters of one readout and when it was taken.

    ``import_wh``/``export_wh`` are the exact totals (see :class:`~iskra_me162.derive.values.
    Energy`); ``export_wh`` is None for a meter that counts no export. ``sources`` names the
    registers behind them (``"1.8.0|2.8.0"``) so that a change of register set is noticed
    instead of read as a jump.
    """

    meter_id: str
    sources: str
    import_wh: Decimal
    export_wh: Decimal | None
    monotonic: float
    wall_time: datetime  # for people reading the state file; never used for arithmetic


@dataclass(frozen=True, slots=True)
class CounterPower:
    """Average import and export power between two snapshots, in W (not rounded)."""

    import_w: Decimal
    export_w: Decimal | None  # None: the meter counts no export
    span_s: float


def implausible(previous: CounterSnapshot, current: CounterSnapshot, max_power_w: int) -> str:
    """Why ``current`` cannot follow ``previous`` (the readout before it), or ``""``."""
    if previous.meter_id != current.meter_id:
        return f"the meter changed from {previous.meter_id} to {current.meter_id}"
    if previous.sources != current.sources:
        return f"the energy registers changed from {previous.sources} to {current.sources}"
    seconds = current.monotonic - previous.monotonic
    for direction, delta in _deltas(previous, current).items():
        if delta < 0:
            return (
                f"the {direction} counter went backwards by {_wh(-delta)} Wh "
                "(meter replaced or reset, or a misread digit?)"
            )
        if delta * 3600 > max_power_w * Decimal(max(seconds, 0.001)):
            return (
                f"the {direction} counter jumped by {_wh(delta)} Wh in {seconds:.1f} s, more "
                f"than a {max_power_w} W connection can deliver"
            )
    return ""


def _wh(delta: Decimal) -> str:
    return format(delta.normalize(), "f")  # 5000001, not 5000001.000 (kWh x 1000)


def power_between(previous: CounterSnapshot, current: CounterSnapshot) -> CounterPower:
    """Average power between two plausible snapshots (``current`` later than ``previous``)."""
    seconds = current.monotonic - previous.monotonic
    elapsed = Decimal(seconds)
    deltas = _deltas(previous, current)
    export = deltas.get("export")
    return CounterPower(
        import_w=deltas["import"] * 3600 / elapsed,
        export_w=None if export is None else export * 3600 / elapsed,
        span_s=seconds,
    )


def _deltas(previous: CounterSnapshot, current: CounterSnapshot) -> dict[str, Decimal]:
    deltas = {"import": current.import_wh - previous.import_wh}
    if current.export_wh is not None and previous.export_wh is not None:
        deltas["export"] = current.export_wh - previous.export_wh
    return deltas


class CounterWindow:
    """The recent snapshots of one meter: enough to find, for a new readout, the newest earlier
    one at least ``min_span_s`` older (the baseline of its power), and no more."""

    def __init__(self, min_span_s: float, max_span_s: float) -> None:
        if not 0 < min_span_s <= max_span_s:
            raise ValueError("need 0 < min_span_s <= max_span_s")
        self.min_span_s = min_span_s
        self.max_span_s = max_span_s
        self._snapshots: deque[CounterSnapshot] = deque(maxlen=MAX_SNAPSHOTS)

    @property
    def snapshots(self) -> tuple[CounterSnapshot, ...]:
        return tuple(self._snapshots)

    @property
    def latest(self) -> CounterSnapshot | None:
        return self._snapshots[-1] if self._snapshots else None

    def restart(self, snapshots: Iterable[CounterSnapshot] = ()) -> None:
        """Forget everything; start from ``snapshots`` (oldest first), e.g. the state file's."""
        self._snapshots.clear()
        self._snapshots.extend(snapshots)

    def baseline_for(self, current: CounterSnapshot) -> tuple[CounterSnapshot | None, str]:
        """The snapshot to compute ``current``'s power from, or None and why there is none."""
        if not self._snapshots:
            return None, "there is no earlier readout yet"
        newest_old_enough = None
        for snapshot in self._snapshots:
            if current.monotonic - snapshot.monotonic >= self.min_span_s:
                newest_old_enough = snapshot
        if newest_old_enough is None:
            # No age in the text: the daemon logs a reason once per change.
            return None, (
                "the earlier readouts are too recent; power from the counters needs a change "
                f"over at least {self.min_span_s:g} s"
            )
        age = current.monotonic - newest_old_enough.monotonic
        if age > self.max_span_s:
            return None, (
                f"the previous readout is {age:.0f} s old (more than {self.max_span_s:g} s): "
                "too long for a figure of the power now"
            )
        return newest_old_enough, ""

    def add(self, snapshot: CounterSnapshot) -> None:
        """Append ``snapshot``; drop those older than the baseline it would need next."""
        snapshots = self._snapshots
        if len(snapshots) >= 2 and (
            snapshot.monotonic - snapshots[-2].monotonic < self.min_span_s / THINNING
        ):
            snapshots[-1] = snapshot  # too close to the one before: keep the window thin
        else:
            snapshots.append(snapshot)
        while (
            len(self._snapshots) >= 3
            and snapshot.monotonic - self._snapshots[1].monotonic >= self.min_span_s
        ):
            self._snapshots.popleft()
