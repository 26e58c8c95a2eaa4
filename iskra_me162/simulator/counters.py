"""Energy registers that advance at a set power, in whole Wh, so totals never drift.

Each direction (import A+, export A-) has one register per tariff; the total is their sum,
computed when asked, so ``1.8.0 == 1.8.1 + 1.8.2`` holds exactly in every readout. Energy
below one Wh is carried in a remainder (joules) and lands in the tariff register that is
active when the Wh completes.
"""

from __future__ import annotations

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
    """One direction's tariff registers plus the energy not yet worth a whole Wh."""

    def __init__(self, start_wh: tuple[int, ...], power_w: int) -> None:
        self.registers = list(start_wh)
        self.power_w = power_w
        self.remainder_j = 0.0

    def advance(self, seconds: float, tariff_index: int) -> None:
        joules = self.remainder_j + self.power_w * seconds
        whole_wh = int(joules // JOULES_PER_WH)
        self.remainder_j = joules - whole_wh * JOULES_PER_WH
        if whole_wh:
            value = self.registers[tariff_index] + whole_wh
            self.registers[tariff_index] = value % REGISTER_MODULUS


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
        self._import = _Direction(import_wh, import_w)
        self._export = _Direction(export_wh, export_w)
        self._tariff = tariff
        self._last = now

    @property
    def tariffs(self) -> int:
        return self._tariffs

    def advance(self, now: float) -> None:
        """Add the energy of the time since the last call at the power that held during it."""
        seconds = now - self._last
        if seconds <= 0:
            return
        self._import.advance(seconds, self._tariff - 1)
        self._export.advance(seconds, self._tariff - 1)
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
        if import_w is not None:
            self._import.power_w = import_w
        if export_w is not None:
            self._export.power_w = export_w

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
