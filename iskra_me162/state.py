"""Counter snapshots, power from counter deltas, and the state file that keeps them over restarts.

A meter without power registers only tells us energy counters. Power is then the change of the
import (export) counter between two readouts divided by the time between them. That time is
always a ``time.monotonic()`` difference: the wall clock jumps (NTP, a Pi without RTC booting in
1970), CLOCK_MONOTONIC does not. CLOCK_MONOTONIC is system-wide and counts from boot, so a value
stored by an earlier process of the same boot is still comparable; the state file stores it
together with the kernel's boot id and a snapshot from another boot is never used for power.

Anything that would make the figure negative or absurd (counter backwards, a different meter,
other registers, a jump that no household connection can deliver, a gap longer than the caller's
limit) is a *re-base*: the new readout becomes the reference and no power is computed from the
old one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FORMAT = "iskra-me162-state"
STATE_VERSION = 1
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

# 100 kW is above any household or small-business connection (3 x 125 A at 230 V is 86 kW; the
# usual 3 x 25..63 A is 17..44 kW), so no real reading is rejected, while a misread digit or a
# meter swap (thousands of kWh at once) is always caught.
DEFAULT_MAX_POWER_W = 100_000
# No limit by default on the time a counter delta may span: a long gap (meter unreachable,
# daemon stopped) gives an average, which is neither negative nor absurd, and update_interval
# may legitimately be hours. Callers that know their interval pass a limit (e.g. 3 intervals).
DEFAULT_MAX_INTERVAL_S: float | None = None
# A state file is a few hundred bytes; anything much larger is not ours (and is not read whole).
_MAX_STATE_BYTES = 64 * 1024


def current_boot_id() -> str:
    """The kernel's random boot id (Linux), or ``""`` where there is none."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class CounterSnapshot:
    """The energy counters of one used readout and when it was taken.

    ``import_wh``/``export_wh`` are the exact totals power is computed from (1.8.0/2.8.0, or
    the sum of the tariff registers when the meter sends no total); ``export_wh`` is None for a
    meter that counts no export. ``sources`` names the registers behind them (``"1.8.0|2.8.0"``)
    so that a change of register set is noticed instead of read as a jump.
    """

    meter_id: str
    sources: str
    import_wh: Decimal
    export_wh: Decimal | None
    monotonic: float
    wall_time: datetime  # for people reading the state file; never used for arithmetic


@dataclass(frozen=True)
class DeltaPower:
    """Average import and export power between two snapshots, in W (not rounded)."""

    import_w: Decimal
    export_w: Decimal
    seconds: float


@dataclass(frozen=True)
class Rebase:
    """No power from the previous snapshot, and why. ``warn``: a fault, not a normal event."""

    reason: str
    warn: bool


def power_between(
    previous: CounterSnapshot,
    current: CounterSnapshot,
    *,
    max_power_w: int = DEFAULT_MAX_POWER_W,
    max_interval_s: float | None = DEFAULT_MAX_INTERVAL_S,
) -> DeltaPower | Rebase:
    """Power from the counter change between two snapshots of this boot, or why there is none."""
    if previous.meter_id != current.meter_id:
        return Rebase(f"the meter changed from {previous.meter_id} to {current.meter_id}", True)
    if previous.sources != current.sources:
        return Rebase(
            f"the energy registers changed from {previous.sources} to {current.sources}", True
        )
    deltas = {"import": current.import_wh - previous.import_wh}
    if current.export_wh is not None and previous.export_wh is not None:
        deltas["export"] = current.export_wh - previous.export_wh
    for direction, delta in deltas.items():
        if delta < 0:
            return Rebase(
                f"the {direction} counter went backwards by {-delta} Wh (meter replaced or reset?)",
                True,
            )
    seconds = current.monotonic - previous.monotonic
    if seconds <= 0:
        return Rebase("no time passed since the previous readout", True)
    if max_interval_s is not None and seconds > max_interval_s:
        return Rebase(
            f"the previous readout is {seconds:.0f} s old (more than {max_interval_s:g} s)", False
        )
    elapsed = Decimal(seconds)
    for direction, delta in deltas.items():
        if delta * 3600 > max_power_w * elapsed:
            return Rebase(
                f"the {direction} counter jumped by {delta} Wh in {seconds:.1f} s, more than "
                f"a {max_power_w} W connection can deliver",
                True,
            )
    return DeltaPower(
        import_w=deltas["import"] * 3600 / elapsed,
        export_w=deltas.get("export", Decimal(0)) * 3600 / elapsed,
        seconds=seconds,
    )


@dataclass(frozen=True)
class SavedState:
    """What the state file holds: the snapshot of the last sent readout and what was sent.

    ``sent`` is (U1, U2, R1, R2) in Wh as the sink last delivered them; ``boot_id`` says in
    which boot ``snapshot.monotonic`` was taken.
    """

    snapshot: CounterSnapshot
    sent: tuple[int, int, int, int]
    boot_id: str


class StateStore:
    """The state file: read once at start, written atomically and only when something changed.

    Every problem (missing, unreadable, corrupt, foreign, other version, unwritable) is logged
    as a warning once per cause and otherwise ignored: the daemon keeps its state in memory.
    ``path`` None means "no state file" and is silent. ``boot_id`` defaults to the running
    kernel's; tests pass another one to act as a different boot.
    """

    def __init__(self, path: str | os.PathLike[str] | None, boot_id: str | None = None) -> None:
        self._path = Path(path) if path else None
        self._boot_id = current_boot_id() if boot_id is None else boot_id
        self._warned: set[str] = set()
        self._unchanged_key: str | None = None  # the content (minus times) now on disk

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def load(self) -> SavedState | None:
        """The saved state, or None (with a warning) when there is no usable one."""
        if self._path is None:
            return None
        path = self._path
        try:
            with path.open("rb") as file:
                data = file.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            self._warn(
                "missing",
                f"state file {path} does not exist (normal on the first start); "
                "power from counter deltas starts with the second readout",
            )
            return None
        except OSError as error:
            self._warn("unreadable", f"cannot read state file {path}: {_reason(error)}")
            return None
        if len(data) > _MAX_STATE_BYTES:
            self._warn("foreign", f"state file {path} is too large to be ours; ignoring it")
            return None
        if not data.strip():
            self._warn("empty", f"state file {path} is empty; ignoring it")
            return None
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._warn("corrupt", f"state file {path} is not valid JSON; ignoring it")
            return None
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            self._warn(
                "foreign", f"{path} is not an iskra-me162 state file; ignoring it (it is replaced)"
            )
            return None
        if document.get("version") != STATE_VERSION:
            self._warn(
                "version",
                f"state file {path} has format version {document.get('version')!r}, "
                f"this program reads version {STATE_VERSION}; ignoring it",
            )
            return None
        try:
            state = _decode(document)
        except (KeyError, TypeError, ValueError, InvalidOperation) as error:
            self._warn("corrupt", f"state file {path} has invalid content ({error}); ignoring it")
            return None
        self._unchanged_key = _change_key(state)
        log.debug("loaded state from %s: %s", path, state)
        return state

    def save(self, state: SavedState) -> bool:
        """Write ``state`` unless it equals what is on disk. True when the file was written."""
        if self._path is None:
            return False
        key = _change_key(state)
        if key == self._unchanged_key:
            log.debug("state unchanged; %s not rewritten", self._path)
            return False
        try:
            _write_atomically(self._path, json.dumps(_encode(state), indent=1) + "\n")
        except OSError as error:
            self._warn(
                "unwritable",
                f"cannot write state file {self._path}: {_reason(error)}; "
                "keeping the counters in memory only",
            )
            return False
        if "unwritable" in self._warned:
            self._warned.discard("unwritable")
            log.warning("state file %s written again", self._path)
        self._unchanged_key = key
        log.debug("state written to %s", self._path)
        return True

    def _warn(self, cause: str, message: str) -> None:
        if cause in self._warned:
            log.debug("%s", message)
            return
        self._warned.add(cause)
        log.warning("%s", message)


def _reason(error: OSError) -> str:
    # strerror only: str(error) repeats the file name and varies with the temp file's name.
    return error.strerror or type(error).__name__


def _encode(state: SavedState) -> dict[str, object]:
    snapshot = state.snapshot
    u1, u2, r1, r2 = state.sent
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "meter_id": snapshot.meter_id,
        "sources": snapshot.sources,
        "import_wh": str(snapshot.import_wh),
        "export_wh": None if snapshot.export_wh is None else str(snapshot.export_wh),
        "boot_id": state.boot_id,
        "monotonic": snapshot.monotonic,
        "wall_time": snapshot.wall_time.isoformat(),
        "sent": {"u1": u1, "u2": u2, "r1": r1, "r2": r2},
    }


def _decode(document: dict[str, object]) -> SavedState:
    sent = document["sent"]
    if not isinstance(sent, dict):
        raise TypeError("sent is not an object")
    counters = tuple(sent[name] for name in ("u1", "u2", "r1", "r2"))
    for value in counters:
        if type(value) is not int or value < 0:
            raise ValueError("sent counters must be non-negative integers")
    export = document["export_wh"]
    monotonic = document["monotonic"]
    if type(monotonic) not in (int, float):
        raise TypeError("monotonic is not a number")
    wall_time = datetime.fromisoformat(_text(document, "wall_time"))
    snapshot = CounterSnapshot(
        meter_id=_text(document, "meter_id"),
        sources=_text(document, "sources"),
        import_wh=_energy(document["import_wh"]),
        export_wh=None if export is None else _energy(export),
        monotonic=float(monotonic),  # type: ignore[arg-type]
        wall_time=wall_time,
    )
    return SavedState(snapshot=snapshot, sent=counters, boot_id=_text(document, "boot_id"))  # type: ignore[arg-type]


def _text(document: dict[str, object], key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _energy(value: object) -> Decimal:
    if not isinstance(value, str):
        raise TypeError("energy is not a decimal string")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise ValueError(f"energy {value!r} is not a non-negative number")
    return number


def _change_key(state: SavedState) -> str:
    """The content that matters for "changed": everything except the two time stamps."""
    encoded = _encode(state)
    del encoded["monotonic"], encoded["wall_time"]
    return json.dumps(encoded, sort_keys=True)


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: a power cut leaves old or new, never half."""
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        temp_path.chmod(0o644)  # mkstemp makes 0600; the counters are not secret
        temp_path.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp_path.unlink()
        raise
    # Persist the rename itself; not fatal where directories cannot be opened or fsynced.
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
