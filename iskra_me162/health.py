"""How the link and the sinks are doing, and the power of the last 24 hours: kept by the daemon,
shown by the status page and ``/metrics``.

The daemon reports each event (a readout, a failed read and why, a push per sink) and each
derived :class:`~iskra_me162.derive.values.Values`; the HTTP endpoint's threads ask for a
:meth:`Health.snapshot` at any time. Everything here is bounded, so that months of running
use the memory of the first day:

* readouts and failures of the last hour in one-minute buckets (60 of them);
* power in one-minute buckets for 24 hours (1440 of them: average, least and most);
* counters since the start (readouts, failures by kind) and per sink its state.

Wall-clock times are for people; ages and buckets run on ``time.monotonic()``, because the wall
clock jumps (NTP at boot on a Pi without a real-time clock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from iskra_me162.derive.values import Energy, Values
from iskra_me162.errors import ChecksumError, IskraError, MeterTimeout, PortError, ReadoutRejected

HOUR_BUCKETS = 60  # one a minute
HISTORY_BUCKETS = 24 * 60  # one a minute, for the 24-hour chart
BUCKET_S = 60.0

# Why a read failed, as the status page and /metrics name it.
CHECKSUM = "checksum"  # BCC (mode C) or CRC (SML) wrong
TIMEOUT = "timeout"  # the meter did not answer (in time)
PORT = "port"  # the port could not be opened or failed
REJECTED = "rejected"  # a verified readout the derive stage held back
OTHER = "other"  # malformed answers, a wrong protocol, ...
FAILURE_KINDS = (CHECKSUM, TIMEOUT, PORT, REJECTED, OTHER)


def failure_kind(error: BaseException) -> str:
    """The kind of a failed read, for counting."""
    if isinstance(error, ChecksumError):
        return CHECKSUM
    if isinstance(error, MeterTimeout):
        return TIMEOUT
    if isinstance(error, PortError):
        return PORT
    if isinstance(error, ReadoutRejected):
        return REJECTED
    return OTHER


@dataclass(frozen=True, slots=True)
class PowerPoint:
    """The net power of one minute: average, least and most (W), and its start (wall time)."""

    start: datetime
    mean_w: float
    min_w: float
    max_w: float


@dataclass(frozen=True, slots=True)
class SinkState:
    """One sink: whether its last push worked, when one last did, and the last error;
    ``connected``: for a sink with a connection (MQTT), whether it was up at that push."""

    name: str
    ok: bool
    pushes: int = 0
    failures: int = 0
    last_ok: datetime | None = None
    last_error: str = ""
    connected: bool | None = None


@dataclass(frozen=True)
class HealthSnapshot:
    """What the status page and /metrics show, at one moment (see :class:`Health`)."""

    started: datetime
    readouts: int  # good readouts since the start
    failures: dict[str, int]  # failed reads since the start, by kind
    last_hour_ok: int
    last_hour_failed: int
    last_readout: datetime | None
    last_readout_age_s: float | None
    last_error: str
    baudrate: int | None  # the speed of the last good readout
    fallbacks: int  # high-speed readouts that failed and fell back to 300 Bd
    meter_counters: dict[str, int]  # the meter's own (SML: frames_ok, crc_errors, ...)
    sinks: tuple[SinkState, ...]
    history: tuple[PowerPoint, ...]  # oldest first, at most 24 hours
    today_since: datetime | None  # today's energy counts from then
    today_import_wh: Decimal | None
    today_export_wh: Decimal | None

    @property
    def checksum_errors(self) -> int:
        """BCC/CRC errors: failed mode C readouts plus SML frames dropped for their CRC."""
        return self.failures.get(CHECKSUM, 0) + self.meter_counters.get("crc_errors", 0)


@dataclass
class _Minute:
    start_monotonic: float
    start: datetime
    ok: int = 0
    failed: int = 0


@dataclass
class _PowerMinute:
    start_monotonic: float
    start: datetime
    total_w: float = 0.0
    count: int = 0
    min_w: float = float("inf")
    max_w: float = float("-inf")

    def add(self, watts: float) -> None:
        self.total_w += watts
        self.count += 1
        self.min_w = min(self.min_w, watts)
        self.max_w = max(self.max_w, watts)

    def point(self) -> PowerPoint:
        return PowerPoint(self.start, self.total_w / self.count, self.min_w, self.max_w)


@dataclass
class _Day:
    """The counters at the first readout of a local day, for today's energy."""

    day: date
    since: datetime  # that readout's time: midnight, or later on the day the daemon started
    import_wh: Decimal | None
    export_wh: Decimal | None


@dataclass
class Health:
    """The daemon's record of events (thread-safe: the HTTP threads take snapshots)."""

    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # for tests
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._started = datetime.now().astimezone()
        self._readouts = 0
        self._failures = dict.fromkeys(FAILURE_KINDS, 0)
        self._minutes: deque[_Minute] = deque(maxlen=HOUR_BUCKETS)
        self._power: deque[_PowerMinute] = deque(maxlen=HISTORY_BUCKETS)
        self._last_readout: tuple[float, datetime] | None = None
        self._last_error = ""
        self._baudrate: int | None = None
        self._fallbacks = 0
        self._meter_counters: dict[str, int] = {}
        self._sinks: dict[str, SinkState] = {}
        self._day: _Day | None = None
        self._values: Values | None = None

    # --- what the daemon reports ---------------------------------------------------------------

    def readout_ok(
        self, baudrate: int | None = None, meter_counters: dict[str, int] | None = None
    ) -> None:
        now = self._now()
        with self._lock:
            self._readouts += 1
            self._minute(now).ok += 1
            self._last_readout = (now, datetime.now().astimezone())
            self._baudrate = baudrate
            if meter_counters is not None:
                self._meter_counters = dict(meter_counters)

    def readout_failed(self, error: BaseException) -> None:
        now = self._now()
        with self._lock:
            self._failures[failure_kind(error)] += 1
            self._minute(now).failed += 1
            self._last_error = str(error) if isinstance(error, IskraError) else type(error).__name__

    def fallbacks_now(self, count: int) -> None:
        """The meter's count of high-speed readouts that failed and fell back to 300 Bd."""
        with self._lock:
            self._fallbacks = count

    def derived(self, values: Values) -> None:
        now = self._now()
        with self._lock:
            self._values = values
            net = values.net_power
            if net is not None:
                self._power_minute(now, values.wall_time).add(float(net.watts))
            self._track_day(values)

    def pushed(self, sink: str, error: str = "", connected: bool | None = None) -> None:
        """A push to ``sink``: ``error`` says why it failed ("" when it worked)."""
        with self._lock:
            old = self._sinks.get(sink, SinkState(sink, ok=True))
            if error:
                self._sinks[sink] = SinkState(
                    sink, False, old.pushes, old.failures + 1, old.last_ok, error, connected
                )
            else:
                now = datetime.now().astimezone()
                self._sinks[sink] = SinkState(
                    sink, True, old.pushes + 1, old.failures, now, "", connected
                )

    # --- what the pages ask ----------------------------------------------------------------------

    def snapshot(self) -> HealthSnapshot:
        now = self._now()
        with self._lock:
            recent = [minute for minute in self._minutes if now - minute.start_monotonic < 3600]
            age = None if self._last_readout is None else now - self._last_readout[0]
            day = self._day
            values = self._values
            today_import = today_export = None
            if day is not None and values is not None:
                today_import = _since(_total(values.import_energy), day.import_wh)
                today_export = _since(_total(values.export_energy), day.export_wh)
            return HealthSnapshot(
                started=self._started,
                readouts=self._readouts,
                failures=dict(self._failures),
                last_hour_ok=sum(minute.ok for minute in recent),
                last_hour_failed=sum(minute.failed for minute in recent),
                last_readout=None if self._last_readout is None else self._last_readout[1],
                last_readout_age_s=age,
                last_error=self._last_error,
                baudrate=self._baudrate,
                fallbacks=self._fallbacks,
                meter_counters=dict(self._meter_counters),
                sinks=tuple(self._sinks[name] for name in sorted(self._sinks)),
                history=tuple(
                    minute.point()
                    for minute in self._power
                    if now - minute.start_monotonic < HISTORY_BUCKETS * BUCKET_S
                ),
                today_since=None if day is None else day.since,
                today_import_wh=today_import,
                today_export_wh=today_export,
            )

    # --- inside ----------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock()

    def _minute(self, now: float) -> _Minute:
        if not self._minutes or now - self._minutes[-1].start_monotonic >= BUCKET_S:
            self._minutes.append(_Minute(now, datetime.now().astimezone()))
        return self._minutes[-1]

    def _power_minute(self, now: float, wall: datetime) -> _PowerMinute:
        if not self._power or now - self._power[-1].start_monotonic >= BUCKET_S:
            self._power.append(_PowerMinute(now, wall.astimezone()))
        return self._power[-1]

    def _track_day(self, values: Values) -> None:
        today = values.wall_time.astimezone().date()
        if self._day is None or self._day.day != today:
            self._day = _Day(
                today,
                values.wall_time.astimezone(),
                _total(values.import_energy),
                _total(values.export_energy),
            )


def _total(energy: Energy | None) -> Decimal | None:
    return None if energy is None else energy.total_wh


def _since(now_wh: Decimal | None, start_wh: Decimal | None) -> Decimal | None:
    if now_wh is None or start_wh is None or now_wh < start_wh:
        return None
    return now_wh - start_wh
