"""The state file: the recent counter snapshots, kept over restarts of the daemon.

It lets power from counter change continue right after a restart instead of waiting for a
second readout. It is owned by the derive stage and written whatever sinks are enabled. The
snapshots' ``monotonic`` times only compare within one boot: the file stores the kernel's boot
id, and a file from another boot is not used for power.

Format version 2 holds a list of snapshots; a version 1 file (one snapshot and the counters last
sent to Domoticz) is still read, as its one snapshot.
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
from itertools import pairwise
from pathlib import Path

from iskra_me162.derive.counters import MAX_SNAPSHOTS, CounterSnapshot

log = logging.getLogger(__name__)

STATE_FORMAT = "iskra-me162-state"
STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

# A state file is a few hundred bytes; anything much larger is not ours (and is not read whole).
_MAX_STATE_BYTES = 64 * 1024


def current_boot_id() -> str:
    """The kernel's random boot id (Linux), or ``""`` where there is none."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class SavedState:
    """What the state file holds: recent counter snapshots of one meter, oldest first, and the
    boot in which their ``monotonic`` times were taken."""

    snapshots: tuple[CounterSnapshot, ...]
    boot_id: str

    @property
    def latest(self) -> CounterSnapshot:
        return self.snapshots[-1]


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
        self._unchanged_key: str | None = None  # the content now on disk

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
                "power from counter change starts once a second readout is far enough apart",
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
        if document.get("version") not in _READABLE_VERSIONS:
            self._warn(
                "version",
                f"state file {path} has format version {document.get('version')!r}, "
                f"this program reads versions 1 and {STATE_VERSION}; ignoring it",
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
    latest = state.latest
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "boot_id": state.boot_id,
        "meter_id": latest.meter_id,
        "sources": latest.sources,
        "snapshots": [
            {
                "import_wh": str(snapshot.import_wh),
                "export_wh": None if snapshot.export_wh is None else str(snapshot.export_wh),
                "monotonic": snapshot.monotonic,
                "wall_time": snapshot.wall_time.isoformat(),
            }
            for snapshot in state.snapshots
        ],
    }


def _decode(document: dict[str, object]) -> SavedState:
    meter_id, sources = _text(document, "meter_id"), _text(document, "sources")
    if document["version"] == 1:
        entries: object = [document]  # one snapshot, at the top level
    else:
        entries = document["snapshots"]
    if not isinstance(entries, list) or not entries or len(entries) > MAX_SNAPSHOTS:
        raise ValueError(f"snapshots must be a list of 1 to {MAX_SNAPSHOTS} entries")
    snapshots = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise TypeError("a snapshot is not an object")
        export = entry["export_wh"]
        monotonic = entry["monotonic"]
        if type(monotonic) not in (int, float):
            raise TypeError("monotonic is not a number")
        snapshots.append(
            CounterSnapshot(
                meter_id=meter_id,
                sources=sources,
                import_wh=_energy(entry["import_wh"]),
                export_wh=None if export is None else _energy(export),
                monotonic=float(monotonic),
                wall_time=datetime.fromisoformat(_text(entry, "wall_time")),
            )
        )
    if any(later.monotonic <= earlier.monotonic for earlier, later in pairwise(snapshots)):
        raise ValueError("snapshots are not in time order")
    return SavedState(snapshots=tuple(snapshots), boot_id=_text(document, "boot_id"))


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
    return json.dumps(_encode(state), sort_keys=True)


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
