"""The derive stage: a verified readout in, the :class:`~iskra_me162.derive.values.Values` that
every sink publishes out.

Per readout, once:

1. Energy per direction and tariff from the registers (:mod:`.registers`).
2. Is it plausible? A readout whose set of energy registers differs from the readouts before it
   (a meter that now and then leaves a line out) is *held back*, because a missing tariff
   register would otherwise go out as a counter of 0; only when the meter sends the new set
   :data:`SHAPE_CONFIRMATIONS` times in a row is it taken as the meter's new normal. A counter
   that went backwards or jumped beyond what a connection can deliver rejects the readout too,
   even from a meter that reports its power itself. Held back or rejected, nothing of it
   reaches any sink (:class:`~iskra_me162.errors.ReadoutRejected`).
3. Power from the meter's power registers; a direction that has none gets it from the timing of
   its counter's steps when the counter is polled live (:mod:`.steps`, ``live_power``), else
   from the change of its counter (:mod:`.counters`) over at least ``min_span_s``, or none.
   A polled counter never falls back to counter change: a few seconds of polls hold no step
   or one, and their change (0 W, or 692 W at a steady 300 W) would be published as the power
   now. Until its steps tell, it has no figure, with one exception: a meter counts one
   direction at a time (the sum over its phases), so while one counter steps at a rate the
   steps pin down, the other one, without an estimate of its own, is 0 W (:func:`_counting`).
4. The counters go into the window of recent snapshots and, for restarts, the state file
   (:mod:`.state`): written whatever sinks are enabled, atomically, only when it changed, at
   most once per ``min_span_s`` and once more at :meth:`Deriver.close`.
"""

from __future__ import annotations

import logging
from decimal import ROUND_HALF_UP, Decimal

from iskra_me162.derive import registers
from iskra_me162.derive.counters import (
    DEFAULT_MAX_POWER_W,
    CounterPower,
    CounterSnapshot,
    CounterWindow,
    implausible,
    power_between,
)
from iskra_me162.derive.state import SavedState, StateStore
from iskra_me162.derive.steps import BOUND, IDLE, NONE, STEPS, StepEstimator, StepPower
from iskra_me162.derive.values import FROM_COUNTERS, FROM_METER, FROM_STEPS, Energy, Power, Values
from iskra_me162.errors import ReadoutRejected
from iskra_me162.readout import Readout

log = logging.getLogger(__name__)

# Readouts in a row with the same changed set of energy registers before it counts as the
# meter's new normal (a reconfigured meter) rather than a glitch (a line left out once).
SHAPE_CONFIRMATIONS = 3
# Power over a longer gap (meter unreadable for a while, daemon stopped) would be a long average
# rather than the power now. Up to 15 minutes (or 10 update intervals) an average is still a
# plausible figure, and readouts that fail now and then must not stop the power altogether.
MIN_MAX_SPAN_S = 900.0
# The counters whose steps give power when they are polled live (import, export).
STEP_COUNTERS = ("1.8.0", "2.8.0")


def spans_for(update_interval: float) -> tuple[float, float]:
    """(min_span_s, max_span_s) of power from counters for a daemon reading every
    ``update_interval`` seconds: half an interval at least, ten intervals (15 min) at most."""
    return update_interval / 2, max(10.0 * update_interval, MIN_MAX_SPAN_S)


class Deriver:
    """Readouts in, :class:`Values` out, with the counter window and the state file behind it.

    ``state_path`` None (or ``""``) keeps the counters in memory only; with ``save_state``
    False the state file is read but never written (``--once --dry-run``). ``boot_id``: for
    tests.
    """

    def __init__(
        self,
        *,
        min_span_s: float,
        max_span_s: float,
        state_path: str | None = None,
        max_power_w: int = DEFAULT_MAX_POWER_W,
        save_state: bool = True,
        boot_id: str | None = None,
    ) -> None:
        if max_power_w <= 0:
            raise ValueError("max_power_w must be positive")
        self._window = CounterWindow(min_span_s, max_span_s)
        self._max_power_w = max_power_w
        self._state = StateStore(state_path or None, boot_id=boot_id)
        self._save_state = save_state
        self._saved_at: float | None = None  # monotonic time of the newest snapshot on disk
        self._shape: frozenset[str] | None = None  # energy registers of the used readouts
        self._new_shape: frozenset[str] | None = None  # a different set seen lately ...
        self._new_shape_seen = 0  # ... this many times in a row
        self._no_window_reason = "there is no earlier readout (cold start)"
        self._last: tuple[Readout, Values] | None = None
        self._steps: dict[str, StepEstimator] = {}  # per polled counter (1.8.0, 2.8.0)
        saved = self._state.load()
        if saved is not None:
            if saved.boot_id and saved.boot_id == self._state.boot_id:
                self._window.restart(saved.snapshots)
                self._saved_at = saved.latest.monotonic
                log.info(
                    "power continues from the state file (readout of %s)",
                    saved.latest.wall_time.isoformat(timespec="seconds"),
                )
            else:
                self._no_window_reason = (
                    "the state file is from before a reboot, its times cannot be compared"
                )

    @property
    def state_path(self) -> str | None:
        return None if self._state.path is None else str(self._state.path)

    def derive(self, readout: Readout) -> Values:
        """The values of ``readout``; ReadoutRejected when nothing of it may be published.

        Deriving the same readout object again gives the same values and changes nothing.
        """
        if self._last is not None and self._last[0] is readout:
            return self._last[1]
        imported = registers.energy_of(readout, 1)
        exported = registers.energy_of(readout, 2)
        self._check_shape(registers.energy_registers(readout))
        snapshot = _snapshot(readout, imported, exported)
        meter_import, meter_export, meter_net = registers.register_power(readout)
        counted, missing = None, ""
        if snapshot is not None:
            latest = self._window.latest
            problem = latest and implausible(latest, snapshot, self._max_power_w)
            if problem:
                # The readout becomes the new reference; the next consistent one is published.
                self._window.restart([snapshot])
                self._steps.clear()
                raise ReadoutRejected(f"counters not trusted, nothing published: {problem}")
            if meter_import is None or (meter_export is None and exported is not None):
                baseline, missing = self._window.baseline_for(snapshot)
                if latest is None:
                    missing = self._no_window_reason
                if baseline is not None:
                    counted = power_between(baseline, snapshot)
            self._window.add(snapshot)
            self._save(snapshot)
        elif meter_import is None:
            missing = "the readout has neither power nor import energy registers"
        stepped, step_missing = self._step_power(readout)
        import_power = meter_import or stepped.get("1.8.0")
        if import_power is None and "1.8.0" not in step_missing:
            import_power = _counted(counted, "import", imported)
        export_power = meter_export or stepped.get("2.8.0")
        if export_power is None and "2.8.0" not in step_missing:
            export_power = _counted(counted, "export", exported)
        if step_missing and (import_power is None or export_power is None):
            missing = "; ".join(f"{cde}: {why}" for cde, why in step_missing.items())
        if export_power is None and exported is None and meter_import is not None:
            # The meter counts no export and has no export register: there is none.
            export_power = Power(Decimal(0), FROM_METER, "")
        if export_power is None and exported is None and counted is not None:
            export_power = Power(Decimal(0), FROM_COUNTERS, "", counted.span_s)
        net_power = meter_net
        if net_power is None and import_power is not None and export_power is not None:
            net_power = Power(
                import_power.watts - export_power.watts,
                import_power.source if import_power.source == export_power.source else "mixed",
                "-".join(name for name in (import_power.registers, export_power.registers) if name),
                import_power.span_s or export_power.span_s,
            )
        values = Values(
            readout=readout,
            import_energy=imported,
            export_energy=exported,
            import_power=import_power,
            export_power=export_power,
            net_power=net_power,
            power_missing="" if import_power and export_power else missing,
        )
        self._last = (readout, values)
        return values

    def _step_power(self, readout: Readout) -> tuple[dict[str, Power], dict[str, str]]:
        """Power from step timing of the counters this readout polled (live power only): the
        figures by counter, and why a polled counter has none."""
        results: dict[str, StepPower] = {}
        for cde, asked_at in readout.polled:
            reading = readout.get(cde)
            wh = readout.energy_wh(cde)
            if cde not in STEP_COUNTERS or reading is None or wh is None:
                continue
            estimator = self._steps.get(cde)
            if estimator is None:
                estimator = self._steps[cde] = StepEstimator(_resolution_wh(reading.value, wh))
            result = results[cde] = estimator.poll(asked_at, wh)
            if result.reset:
                log.info("power from the steps of %s starts afresh: %s", cde, result.reset)
        found = {
            cde: Power(result.watts, FROM_STEPS, cde, result.span_s)
            for cde, result in results.items()
            if result.watts is not None
        }
        counting = _counting(results)
        if counting is not None:
            # One direction at a time: the other counter is not counting now.
            for cde in results:
                if cde != counting:
                    found[cde] = Power(Decimal(0), FROM_STEPS, cde, results[counting].span_s)
        missing = {cde: result.reason for cde, result in results.items() if cde not in found}
        return found, missing

    def close(self) -> None:
        """Write the newest counters to the state file if they are not there yet."""
        latest = self._window.latest
        if latest is not None and latest.monotonic != self._saved_at:
            self._write()

    def _save(self, snapshot: CounterSnapshot) -> None:
        if self._saved_at is None or snapshot.monotonic - self._saved_at >= self._window.min_span_s:
            self._write()

    def _write(self) -> None:
        snapshots = self._window.snapshots
        if snapshots and self._save_state:
            self._state.save(SavedState(snapshots=snapshots, boot_id=self._state.boot_id))
            self._saved_at = snapshots[-1].monotonic

    def _check_shape(self, shape: frozenset[str]) -> None:
        """ReadoutRejected unless a readout with energy registers ``shape`` may be used (logs
        the start and end of a hold-back)."""
        if self._shape is None or shape == self._shape:
            if self._new_shape is not None:
                log.warning("the meter sends its usual energy registers again (%s)", _names(shape))
            self._shape, self._new_shape, self._new_shape_seen = shape, None, 0
            return
        seen = self._new_shape_seen + 1 if shape == self._new_shape else 1
        if seen >= SHAPE_CONFIRMATIONS:
            log.warning(
                "the meter now sends the energy registers %s instead of %s (%d readouts in a "
                "row): taking that as its new normal",
                _names(shape),
                _names(self._shape),
                seen,
            )
            self._shape, self._new_shape, self._new_shape_seen = shape, None, 0
            return
        self._new_shape, self._new_shape_seen = shape, seen
        missing, new = _names(self._shape - shape), _names(shape - self._shape)
        raise ReadoutRejected(
            "readout held back, nothing published: its energy registers differ from the earlier "
            f"readouts' (missing: {missing}; new: {new}), "
            f"and a missing counter is never published as 0; used again when the meter sends "
            f"{_names(self._shape)}, or this new set {SHAPE_CONFIRMATIONS} times in a row"
        )


def _snapshot(
    readout: Readout, imported: Energy | None, exported: Energy | None
) -> CounterSnapshot | None:
    if imported is None:
        return None
    return CounterSnapshot(
        meter_id=readout.identity.meter_id,
        sources=f"{imported.source}|{'-' if exported is None else exported.source}",
        import_wh=imported.total_wh,
        export_wh=None if exported is None else exported.total_wh,
        monotonic=readout.monotonic,
        wall_time=readout.wall_time,
    )


def _counted(counted: CounterPower | None, direction: str, energy: Energy | None) -> Power | None:
    if counted is None or energy is None:
        return None
    watts = counted.import_w if direction == "import" else counted.export_w
    if watts is None:
        return None
    # Whole watts: the figure is only good to 3600 / span W (60 W over a minute), and every
    # sink then shows the same number (Domoticz can take no other).
    whole = watts.to_integral_value(rounding=ROUND_HALF_UP)
    return Power(whole, FROM_COUNTERS, energy.source, counted.span_s)


def _counting(results: dict[str, StepPower]) -> str | None:
    """The one polled counter that counts now, when the other one can be taken as 0 W.

    A meter counts one direction at a time (import or export of the sum over its phases). A
    counter whose steps give an estimate counts; the other one, unless it has an estimate
    too, does not (its bound only says how long ago it last stepped). A counter whose figure
    is its bound after steps (the load fell) counts too, when the other one has not stepped
    at all since the start.
    """
    if len(results) != 2:
        return None
    estimated = [cde for cde, result in results.items() if result.basis == STEPS]
    if len(estimated) == 1:
        return estimated[0] if results[estimated[0]].watts else None
    if estimated:
        return None  # both estimated: a change of direction, each figure stands
    falling = [cde for cde, result in results.items() if result.basis == BOUND and result.watts]
    if len(falling) != 1:
        return None
    other = next(result for cde, result in results.items() if cde != falling[0])
    return falling[0] if other.basis == IDLE or (other.basis == NONE and other.steps == 0) else None


def _resolution_wh(value: Decimal | None, wh: Decimal) -> Decimal:
    """The step of a counter register, from its last digit: 0032927.960 kWh steps by 1 Wh."""
    if value is None or value == 0:
        return Decimal(1)
    exponent = value.as_tuple().exponent
    digit = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)
    return abs(digit * wh / value)  # the register's unit to Wh


def _names(found: frozenset[str]) -> str:
    return ", ".join(sorted(found)) or "none"
