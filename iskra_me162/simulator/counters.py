"""Energy registers that advance at a set power, in whole Wh, so totals never drift.

Each direction (import A+, export A-) has one register per tariff; the total is their sum,
computed when asked, so ``1.8.0 == 1.8.1 + 1.8.2`` holds exactly in every readout. Energy
below one Wh is carried in a remainder (joules) and lands in the tariff register that is
active when the Wh completes.

A load profile (:func:`parse_load`, ``300,2000@20s,800@60s``) is a list of :class:`LoadStep`:
the meter applies each step at its instant (``EnergyCounters.set_power`` at that time), so a
register steps by 1 Wh exactly when the integrated energy crosses the next Wh and the time
between two steps is 3600 / P seconds at a power P.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from iskra_me162.errors import ConfigError

JOULES_PER_WH = 3600
REGISTER_MODULUS = 10**10  # 7.3 digits of kWh = 10 digits of Wh; registers roll over like a meter


@dataclass(frozen=True)
class Registers:
    """A snapshot of the meter's registers: energy per tariff (Wh), power (W), active tariff."""

    import_wh: tuple[int, ...]
    export_wh: tuple[int, ...]
    import_w: int
    export_w: int
    tariff: int

    @property
    def import_total_wh(self) -> int:
        return sum(self.import_wh)

    @property
    def export_total_wh(self) -> int:
        return sum(self.export_wh)


class _Direction:
    """One direction's tariff registers plus the energy not yet worth a whole Wh.

    The energy since the last power change is computed afresh from the time since then at each
    look (not summed up look by look), so however often the registers are read, a Wh completes
    when the energy crosses it, to the float precision of one product.
    """

    def __init__(self, start_wh: tuple[int, ...], power_w: int, now: float) -> None:
        self.registers = list(start_wh)
        self.power_w = power_w
        self._base_j = 0.0  # energy below one Wh at the last power change
        self._since = now
        self._counted = 0  # Wh credited since then

    def _energy_j(self, now: float) -> float:
        return self._base_j + self.power_w * (now - self._since)

    def advance(self, now: float, tariff_index: int) -> None:
        whole_wh = int(self._energy_j(now) // JOULES_PER_WH) - self._counted
        if whole_wh > 0:
            self._counted += whole_wh
            value = self.registers[tariff_index] + whole_wh
            self.registers[tariff_index] = value % REGISTER_MODULUS

    def set_power(self, now: float, watts: int) -> None:
        """Call after ``advance(now)``: the new power counts from ``now``."""
        self._base_j = self._energy_j(now) - self._counted * JOULES_PER_WH
        self._since, self._counted, self.power_w = now, 0, watts


class EnergyCounters:
    """Import and export registers of a meter with ``tariffs`` tariffs, driven by a clock.

    The clock is whatever the caller passes as ``now`` (seconds, monotonic). Time that goes
    backwards is ignored, so a caller may pass the same or an earlier instant without harm.
    """

    def __init__(
        self,
        now: float,
        *,
        import_wh: tuple[int, ...],
        export_wh: tuple[int, ...],
        import_w: int = 0,
        export_w: int = 0,
        tariff: int = 1,
    ) -> None:
        if len(import_wh) != len(export_wh) or not import_wh:
            raise ConfigError("import and export need the same number (>= 1) of tariff registers")
        for value in (*import_wh, *export_wh):
            _check_register(value)
        self._tariffs = len(import_wh)
        self._check_tariff(tariff)
        _check_power(import_w)
        _check_power(export_w)
        self._import = _Direction(import_wh, import_w, now)
        self._export = _Direction(export_wh, export_w, now)
        self._tariff = tariff
        self._last = now

    @property
    def tariffs(self) -> int:
        return self._tariffs

    def advance(self, now: float) -> None:
        """Add the energy of the time since the last call at the power that held during it."""
        if now <= self._last:
            return
        self._import.advance(now, self._tariff - 1)
        self._export.advance(now, self._tariff - 1)
        self._last = now

    def set_power(
        self, now: float, import_w: int | None = None, export_w: int | None = None
    ) -> None:
        """Change the power from ``now`` on; energy up to ``now`` counts at the old power."""
        if import_w is not None:
            _check_power(import_w)
        if export_w is not None:
            _check_power(export_w)
        self.advance(now)
        at = max(now, self._last)  # time that went backwards changes the power from the last look
        if import_w is not None:
            self._import.set_power(at, import_w)
        if export_w is not None:
            self._export.set_power(at, export_w)

    def set_tariff(self, now: float, tariff: int) -> None:
        """Make ``tariff`` (1-based) the one that counts from ``now`` on."""
        self._check_tariff(tariff)
        self.advance(now)
        self._tariff = tariff

    def snapshot(self, now: float) -> Registers:
        self.advance(now)
        return Registers(
            import_wh=tuple(self._import.registers),
            export_wh=tuple(self._export.registers),
            import_w=self._import.power_w,
            export_w=self._export.power_w,
            tariff=self._tariff,
        )

    def _check_tariff(self, tariff: int) -> None:
        if not 1 <= tariff <= self._tariffs:
            raise ConfigError(f"tariff must be 1..{self._tariffs}, not {tariff}")


def _check_power(watts: int) -> None:
    if not isinstance(watts, int) or isinstance(watts, bool) or not 0 <= watts <= 10_000_000:
        raise ConfigError(f"power must be a whole number 0..10000000 W, not {watts!r}")


def _check_register(wh: int) -> None:
    if not isinstance(wh, int) or not 0 <= wh < REGISTER_MODULUS:
        raise ConfigError(f"register start value must be 0..{REGISTER_MODULUS - 1} Wh, not {wh}")


@dataclass(frozen=True)
class LoadStep:
    """From ``at`` seconds after the meter started, the power is ``watts``."""

    at: float
    watts: int


_STEP_RE = re.compile(r"\s*(\d+)\s*(?:@\s*(\d+(?:\.\d*)?|\.\d+)\s*s?)?\s*", re.ASCII)


def parse_load(text: str) -> tuple[LoadStep, ...]:
    """``W[,W@Ts]...``: ``300,2000@20s,800@60s`` is 300 W from the start, 2000 W from 20 s on
    and 800 W from 60 s on (``s`` may be left out; the first step has no time or ``@0``).
    Raises ValueError for text that does not say that; :func:`check_load` checks the rest."""
    steps = []
    for part in text.split(","):
        match = _STEP_RE.fullmatch(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not W or W@Ts (e.g. 300,2000@20s)")
        watts, at = match.groups()
        steps.append(LoadStep(float(at or 0), int(watts)))
    check_load(steps)
    return tuple(steps)


def check_load(steps: tuple[LoadStep, ...] | list[LoadStep]) -> None:
    """ValueError unless the first step starts at 0, times increase and every power is valid."""
    if not steps:
        raise ValueError("a load profile needs at least one step")
    if steps[0].at != 0:
        raise ValueError(f"the first step starts at 0 s, not at {steps[0].at:g} s")
    for earlier, later in itertools.pairwise(steps):
        if not later.at > earlier.at:
            raise ValueError(f"step times must increase: {later.at:g} s after {earlier.at:g} s")
    for step in steps:
        if not math.isfinite(step.at) or step.at > 10**9:
            raise ValueError(f"step time {step.at!r} s is out of range")
        try:
            _check_power(step.watts)
        except ConfigError as error:
            raise ValueError(str(error)) from None
