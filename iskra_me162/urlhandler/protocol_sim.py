"""``sim://<profile>?<options>``: the simulated meter as an in-process pyserial port.

Examples: ``sim://me162``, ``sim://me162?power=450``, ``sim://mt174?speedup=inf&echo=1``,
``sim://simple?corrupt_every=3&export=1200``. The options are those of
:mod:`iskra_me162.simulator.options` (``power``, ``export``, ``tariff``, ``serial``, ``speedup``,
``echo``, ``noise``, ``ignore_baud``, ``corrupt_every``, ``bad_bcc_every``, ``truncate_every``,
``silent``, ``lockout``, ``high_bit`` ...).

Programming mode and live power: ``sim://me162?progmode=on&load=300,2000@20s`` is an ME162
that answers ``ACK 0 Z 1`` with P0 and then R1 (``(ERROR)`` for a register it lacks), B0 and
NAK, drops programming mode after ``progmode_timeout`` s (60) without a command, and draws
300 W, then 2000 W from 20 s after the port was opened (``load=300,2000@20s,800@60s``: more
steps; ``export_load`` the same for export). Without ``progmode=on`` the meter has no
programming mode (``progmode=readout`` / ``nak``: how it says so). Faults for tests:
``refuse_progmode=nak``, ``read_bad_bcc_at=N``, ``silent_from=T&silent_for=S``,
``error_registers=1.8.0``. ``Serial.commands`` / ``violations`` tell what the reader wrote
(``iskra_me162.protocols.iec62056_21.is_allowed_command`` is the reader's side of that list),
``Serial.reads`` what the meter answered.

``sim://mt175?power=800&interval=1`` is an SML push
meter instead (options of :mod:`iskra_me162.simulator.sml_push`): it sends a frame every
``interval`` seconds at 9600 8N1 without being asked. A bad URL raises
:class:`~iskra_me162.errors.ConfigError`, because it is a configuration mistake that no
reopening will fix.

There is no thread: the meter's transmissions carry their start time and character time, and
whoever touches the port (read, in_waiting, write, a baud change) first brings the line up to
the present. A transmission that starts while the reader's baud rate differs from the meter's
arrives garbled, as on a real UART; the rate is taken from ``baudrate`` (``_reconfigure_port``).
``read`` blocks on a condition variable until a byte is due, the timeout passes or
``cancel_read`` is called.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException, to_bytes

from iskra_me162.errors import ConfigError
from iskra_me162.simulator.counters import Registers
from iskra_me162.simulator.line import byte_time, garble
from iskra_me162.simulator.model import (
    Faults,
    MeterConfig,
    MeterModel,
    ReceivedCommand,
    ServedRead,
    ServedReadout,
    SessionState,
    Transmission,
)
from iskra_me162.simulator.options import parse_config
from iskra_me162.simulator.sml_push import (
    SML_PUSH_PROFILES,
    PushRegisters,
    ServedFrame,
    SmlPushConfig,
    SmlPushModel,
    garble_8n1,
    parse_sml_push_config,
)

_MIN_WAIT = 0.0005  # never spin on a wait that float rounding made zero


@dataclass
class _Segment:
    """Bytes on their way to the reader: byte i is complete at ``start + (i+1) * per_byte``."""

    payload: bytes
    start: float
    per_byte: float
    taken: int = 0

    def arrived(self, now: float) -> int:
        if now < self.start:
            return 0
        if self.per_byte <= 0:
            return len(self.payload)
        return min(len(self.payload), int((now - self.start) / self.per_byte))

    def next_arrival(self, now: float) -> float:
        return self.start + (self.arrived(now) + 1) * self.per_byte


def parse_url(url: str) -> MeterConfig | SmlPushConfig:
    """``sim://<profile>?<options>`` -> MeterConfig (SmlPushConfig for mt175), or ConfigError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise ConfigError(f"not a sim:// URL: {url!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"sim:// URL has a path {parts.path!r}; use sim://<profile>?<options>")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise ConfigError(f"sim:// URL gives option {name!r} twice: {url!r}")
        options[name] = value
    profile = parts.netloc or "me162"
    try:
        if options.get("profile", profile).lower() in SML_PUSH_PROFILES:
            return parse_sml_push_config(options, profile)
        return parse_config(options, profile)
    except ConfigError as error:
        raise ConfigError(f"{url}: {error}") from None


class Serial(SerialBase):
    """A pyserial port with a simulated meter at the other end of the line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._condition = threading.Condition()
        self._clock = time.monotonic
        self._model: MeterModel | SmlPushModel | None = None
        self._garble = garble  # the line's bit framing: 7E1 (mode C) or 8N1 (SML)
        self._scheduled: deque[Transmission] = deque()
        self._segments: deque[_Segment] = deque()
        self._line_baud = 0  # the reader's rate as the line last saw it
        self._cancel = False
        self._write_done = 0.0
        super().__init__(*args, **kwargs)

    # --- pyserial interface --------------------------------------------------------------------
    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        config = parse_url(self._port)
        with self._condition:
            if isinstance(config, SmlPushConfig):
                self._model = SmlPushModel(config, self._clock())
                self._garble = garble_8n1
            else:
                self._model = MeterModel(config, self._clock())
                self._garble = garble
            self._scheduled.clear()
            self._segments.clear()
            self._line_baud = self._baudrate
            self._cancel = False
        self.is_open = True

    def close(self) -> None:
        with self._condition:
            self.is_open = False
            self._condition.notify_all()

    def from_url(self, url: str) -> MeterConfig | SmlPushConfig:
        return parse_url(url)

    def _reconfigure_port(self, force_update: bool = False) -> None:
        if not isinstance(self._baudrate, int) or self._baudrate <= 0:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")
        with self._condition:
            # What started at the old rate was heard at the old rate.
            self._advance(self._clock())
            self._line_baud = self._baudrate

    @property
    def in_waiting(self) -> int:
        self._check_open()
        with self._condition:
            now = self._clock()
            self._advance(now)
            return self._arrived(now)

    def read(self, size: int = 1) -> bytes:
        self._check_open()
        deadline = None if self._timeout is None else self._clock() + self._timeout
        data = bytearray()
        with self._condition:
            while True:
                now = self._clock()
                self._advance(now)
                data += self._take(size - len(data), now)
                if len(data) >= size or not self.is_open:
                    break
                if self._cancel:
                    break
                if deadline is not None and now >= deadline:
                    break
                waits = [t - now for t in (deadline, self._next_arrival(now)) if t is not None]
                self._condition.wait(max(_MIN_WAIT, min(waits)) if waits else None)
            self._cancel = False
        return bytes(data)

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._check_open()
        data = to_bytes(data)
        with self._condition:
            model = self._require_model()
            now = self._clock()
            self._advance(now)
            if model.faults.echo:
                self._segments.append(_Segment(bytes(data), now, 0.0))
            listen = model.listen_baud_at(now)
            heard = (
                data if self._line_baud == listen else self._garble(data, self._line_baud, listen)
            )
            self._scheduled.extend(model.receive(heard, now, sent=bytes(data)))
            line_time = len(data) * byte_time(self._line_baud, model.config.speedup)
            self._write_done = max(self._write_done, now) + line_time
            self._condition.notify_all()
        return len(data)

    def flush(self) -> None:
        """Wait until the written bytes have left at the line's speed (like tcdrain)."""
        self._check_open()
        remaining = self._write_done - self._clock()
        if remaining > 0:
            time.sleep(remaining)

    def reset_input_buffer(self) -> None:
        """Drop what has arrived; what is still on the line arrives later, as on a UART."""
        self._check_open()
        with self._condition:
            now = self._clock()
            self._advance(now)
            self._take(self._arrived(now), now)

    def reset_output_buffer(self) -> None:
        self._check_open()

    @property
    def out_waiting(self) -> int:
        self._check_open()
        return 0

    def cancel_read(self) -> None:
        with self._condition:
            self._cancel = True
            self._condition.notify_all()

    def cancel_write(self) -> None:
        """Writes never block here; nothing to cancel."""

    def _update_break_state(self) -> None:
        """A break condition means nothing to the simulated meter."""

    def _update_rts_state(self) -> None:
        """An IR head has no modem lines."""

    def _update_dtr_state(self) -> None:
        """An IR head has no modem lines."""

    @property
    def cts(self) -> bool:
        self._check_open()
        return True

    @property
    def dsr(self) -> bool:
        self._check_open()
        return True

    @property
    def ri(self) -> bool:
        self._check_open()
        return False

    @property
    def cd(self) -> bool:
        self._check_open()
        return True

    # --- the meter, for tests -----------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self._require_model().faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace the fault set and/or change single faults by name, while the port is open."""
        with self._condition:
            model = self._require_model()
            try:
                model.faults = replace(faults or model.faults, **changes)
            except TypeError as error:
                raise ConfigError(f"unknown fault: {error}") from None
            return model.faults

    def set_power(self, import_w: int | None = None, export_w: int | None = None) -> None:
        with self._condition:
            self._require_model().set_power(self._clock(), import_w, export_w)

    def set_tariff(self, tariff: int) -> None:
        with self._condition:
            self._require_model().set_tariff(self._clock(), tariff)

    def registers(self) -> Registers | PushRegisters:
        with self._condition:
            return self._require_model().registers(self._clock())

    @property
    def readouts(self) -> list[ServedReadout] | list[ServedFrame]:
        """What the meter sent: readouts (mode C) or frames (SML push, also as ``frames``)."""
        with self._condition:
            return list(self._require_model().history)

    @property
    def reads(self) -> list[ServedRead]:
        """The R1 answers of a mode C meter in programming mode, oldest first."""
        with self._condition:
            return list(self._require_mode_c().reads)

    @property
    def commands(self) -> list[ReceivedCommand]:
        """The messages the reader wrote to a mode C meter, as written, oldest first."""
        with self._condition:
            return list(self._require_mode_c().commands)

    @property
    def violations(self) -> int:
        """Messages a read-only reader must not send (W, E, P, garbage ...), since open."""
        with self._condition:
            return self._require_mode_c().violations

    @property
    def started(self) -> float:
        """When the meter started (time.monotonic): load steps count from here."""
        with self._condition:
            return self._require_mode_c().started

    def state(self) -> SessionState:
        """The mode C meter's session state now."""
        with self._condition:
            return self._require_mode_c().state(self._clock())

    @property
    def frames(self) -> list[ServedFrame]:
        """The frames an SML push meter sent (heard or not), oldest first."""
        with self._condition:
            model = self._require_model()
            if not isinstance(model, SmlPushModel):
                raise ConfigError("frames: this sim:// meter is not an SML push meter")
            return list(model.history)

    # --- the line -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def _require_model(self) -> MeterModel:
        if self._model is None:
            raise PortNotOpenError()
        return self._model

    def _require_mode_c(self) -> MeterModel:
        model = self._require_model()
        if not isinstance(model, MeterModel):
            raise ConfigError("this sim:// meter is an SML push meter: no mode C commands")
        return model

    def _advance(self, now: float) -> None:
        """Put every transmission that has started by ``now`` on the line at today's rate."""
        if isinstance(self._model, SmlPushModel):
            self._scheduled.extend(push.transmission for push in self._model.pushes_due(now))
        while self._scheduled and self._scheduled[0].start <= now:
            transmission = self._scheduled.popleft()
            data = transmission.data
            if self._line_baud != transmission.baud:
                data = self._garble(data, transmission.baud, self._line_baud)
            per_byte = transmission.duration / len(data) if data else 0.0
            self._segments.append(_Segment(data, transmission.start, per_byte))

    def _arrived(self, now: float) -> int:
        count = 0
        for segment in self._segments:
            arrived = segment.arrived(now)
            count += arrived - segment.taken
            if arrived < len(segment.payload):
                break  # later bytes queue behind the ones still on the line
        return count

    def _take(self, size: int, now: float) -> bytes:
        taken = bytearray()
        while self._segments and len(taken) < size:
            segment = self._segments[0]
            arrived = segment.arrived(now)
            end = min(arrived, segment.taken + size - len(taken))
            taken += segment.payload[segment.taken : end]
            segment.taken = end
            if segment.taken >= len(segment.payload):
                self._segments.popleft()
            elif end >= arrived:
                break
        return bytes(taken)

    def _next_arrival(self, now: float) -> float | None:
        for segment in self._segments:
            if segment.arrived(now) < len(segment.payload):
                return segment.next_arrival(now)
        if self._scheduled:
            return self._scheduled[0].start
        if isinstance(self._model, SmlPushModel):
            return self._model.next_push_at  # a push meter talks without being asked
        return None
