"""A meter that pushes SML frames (ISKRA MT175, EMH, eBZ, DZG ...): port + SML core.

The meter sends a frame every second or two whether anybody listens or not, so there is no
session: :meth:`SmlMeter.read` reads what arrives, feeds the sans-I/O
:class:`~iskra_me162.protocols.sml.SmlStreamReader` and returns the next good frame as a
:class:`~iskra_me162.readout.Readout`. Frames with a bad CRC never yield values; they are
counted (:attr:`SmlMeter.stats`) and, when no good frame comes at all, the timeout message
says what did arrive so the log tells "wrong baud rate?" from "head misaligned?".

The reader keeps its buffer across calls (bytes after a frame are the start of the next one)
and drops it when the port was (re)opened: bytes from before a reopen belong to no frame. All
waiting goes through :meth:`Port.read_some`, which calls the daemon's tick between slices, so
SIGTERM and the watchdog are never held up by a silent meter.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from iskra_me162.errors import ConfigError, MeterTimeout
from iskra_me162.port import Port
from iskra_me162.protocols.sml import SmlFrame, SmlStreamReader, frame_to_readout
from iskra_me162.readout import Readout

log = logging.getLogger(__name__)

DEFAULT_FRAME_TIMEOUT = 10.0  # meters push every 1-4 s; a few missed frames are no failure yet
# Once a frame has begun, let the line gather this long before the next read: at 9600 Bd a read
# right away returns one or two bytes, so a 400-byte frame took ~200 reads (8 ms of CPU per
# frame here, several times that on a Pi Zero); with the pause it takes ~15. The frame is
# complete at most this much later; the driver's buffer (4 KiB) holds seconds of bytes.
GATHER_S = 0.03
SML_BAUDRATE = 9600  # what nearly every SML meter's info interface sends, always 8N1
SML_SERIAL_FORMAT = "8N1"

PIN_HINT = (
    "the meter's PIN has not been entered: it sends whole kWh only and no power; enter the "
    "PIN (ask your grid operator) to get Wh resolution and power"
)

_UNIT_WH = 30
_UNIT_W = 27
_WHOLE_KWH_SCALER = 3
# The hint is for the person reading the log once, not for every frame or every reopen.
_pin_hint_logged = False

# Counters of the stream reader that stats reports (summed over readers replaced on reopen).
_READER_COUNTERS = (
    "frames_ok",
    "crc_errors",
    "malformed",
    "truncated",
    "decode_errors",
    "overflows",
    "dropped_bytes",
)


class SmlMeter:
    """Reads a push meter through ``port`` (open it at 9600 8N1, see :data:`SML_BAUDRATE`).

    ``frame_timeout`` is how long :meth:`read` waits for a good frame before it raises
    :class:`MeterTimeout`.
    """

    pushes = True  # the daemon reads push meters continuously

    def __init__(self, port: Port, frame_timeout: float = DEFAULT_FRAME_TIMEOUT) -> None:
        if not frame_timeout > 0:
            raise ConfigError(f"SML frame timeout must be > 0 s, not {frame_timeout!r}")
        self.port = port
        self.frame_timeout = frame_timeout
        self._reader = SmlStreamReader()
        self._earlier = dict.fromkeys(_READER_COUNTERS, 0)  # counts of replaced readers
        self._bytes_received = 0
        self._frames_skipped = 0
        self._timeouts = 0
        self._opens = 0

    def read(self) -> Readout:
        """The next good frame as a Readout.

        When one chunk from the port completes several frames (the caller was busy and the
        line buffered them), the newest is returned and the older ones are counted as
        ``frames_skipped``: a readout is never older than the data that arrived with it.
        Raises :class:`MeterTimeout` when no good frame arrived within ``frame_timeout``, and
        :class:`PortError` when the port fails (the next call reopens it).
        """
        if not self.port.is_open:
            self.port.open()
            self._opens += 1
            self._new_reader()
        reader = self._reader
        deadline = time.monotonic() + self.frame_timeout
        window = _Window(reader)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(window)
            try:
                chunk = self.port.read_some(remaining)
            except MeterTimeout:
                raise self._timeout(window) from None
            window.bytes += len(chunk)
            self._bytes_received += len(chunk)
            reader.add(chunk)
            newest: SmlFrame | None = None
            for frame in reader.frames():
                if newest is not None:
                    self._frames_skipped += 1
                newest = frame
            if newest is not None:
                readout = frame_to_readout(newest, datetime.now(UTC), time.monotonic())
                if _sends_whole_kwh_only(newest):
                    _log_pin_hint()
                return readout
            if reader.buffered:  # a frame has begun: let more of it arrive before reading again
                time.sleep(min(GATHER_S, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self.port.close()
        self._new_reader()

    @property
    def stats(self) -> dict[str, int]:
        """Counters since this object was made, for logs and the status output.

        ``frames_ok`` good frames (``frames_skipped`` of them superseded by a newer one in
        the same chunk), ``crc_errors`` frames dropped for a bad CRC, ``malformed`` /
        ``truncated`` / ``decode_errors`` frames dropped for other reasons, ``dropped_bytes``
        bytes that were in no good frame, ``bytes_received``, ``timeouts``, ``opens``.
        """
        current = self._reader_counts(self._reader)
        stats = {name: self._earlier[name] + current[name] for name in _READER_COUNTERS}
        stats.update(
            frames_skipped=self._frames_skipped,
            bytes_received=self._bytes_received,
            timeouts=self._timeouts,
            opens=self._opens,
        )
        return stats

    def _new_reader(self) -> None:
        """Start over with an empty buffer, keeping the old reader's counts."""
        old = self._reader
        counts = self._reader_counts(old)
        counts["dropped_bytes"] += old.buffered  # a partial frame that will never complete
        for name in _READER_COUNTERS:
            self._earlier[name] += counts[name]
        self._reader = SmlStreamReader()

    @staticmethod
    def _reader_counts(reader: SmlStreamReader) -> dict[str, int]:
        return {name: getattr(reader, name) for name in _READER_COUNTERS}

    def _timeout(self, window: _Window) -> MeterTimeout:
        self._timeouts += 1
        return MeterTimeout(
            f"no good SML frame within {self.frame_timeout:g} s on {self.port.url}: "
            + window.explain(self._reader)
        )


class _Window:
    """What one read() call saw, for the timeout message."""

    def __init__(self, reader: SmlStreamReader) -> None:
        self.bytes = 0
        self._crc_errors = reader.crc_errors
        self._other = reader.malformed + reader.truncated + reader.decode_errors

    def explain(self, reader: SmlStreamReader) -> str:
        if self.bytes == 0:
            return (
                "nothing arrived (is the head on the meter's optical interface? some meters "
                "push only once their info interface is switched on)"
            )
        crc_errors = reader.crc_errors - self._crc_errors
        other = reader.malformed + reader.truncated + reader.decode_errors - self._other
        text = f"{self.bytes} bytes arrived"
        if crc_errors or other:
            text += f", {crc_errors} frames dropped for a bad CRC"
            if other:
                text += f" and {other} cut short or malformed"
            return text + " (head misaligned, stray light, or wrong baud rate?)"
        return text + (
            " but no SML frame start among them (wrong baud rate or serial format? SML "
            f"meters send {SML_BAUDRATE} {SML_SERIAL_FORMAT}; or the meter speaks "
            "IEC 62056-21)"
        )


def _sends_whole_kwh_only(frame: SmlFrame) -> bool:
    """Energy registers in whole kWh and no power entry: a meter whose PIN was not entered."""
    energy = False
    for entry in frame.entries:
        if entry.unit == _UNIT_W:
            return False
        name = entry.obj_name
        if entry.unit == _UNIT_WH and len(name) == 6 and name[2] in (1, 2) and name[3] == 8:
            if (entry.scaler or 0) < _WHOLE_KWH_SCALER:
                return False
            energy = True
    return energy


def _log_pin_hint() -> None:
    global _pin_hint_logged
    if not _pin_hint_logged:
        _pin_hint_logged = True
        log.info(PIN_HINT)
