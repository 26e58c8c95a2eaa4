"""The meter side of IEC 62056-21 mode C as a sans-I/O state machine.

:meth:`MeterModel.receive` takes the bytes the meter heard and the time they arrived and returns
what the meter sends back as :class:`Transmission` objects (bytes, baud rate, start time on the
caller's clock, time per character). Runners (a pty, a pyserial URL handler) only move bytes and
keep time; every protocol decision and every fault lives here, so one model serves all runners
and a test can drive a whole session with byte strings and made-up instants.

The session, as a real meter runs it:

1. idle, listening at 300 Bd for ``/?!`` CR LF (or ``/?<address>!`` CR LF);
2. after its reaction time (200 ms, or 20 ms when the ident's third letter is lower case) it
   sends ``/ISK5ME162-0033`` CR LF at 300 Bd;
3. it waits up to ``ack_timeout`` seconds (1.5 s) after the last ident character for
   ``ACK 0 Z 0`` CR LF; ``Z`` = '0' keeps 300 Bd, ``Z`` up to its own baud character switches;
   anything else ends the session;
4. after its reaction time it sends ``STX data ! CR LF ETX BCC`` at the agreed rate and goes
   back to idle at 300 Bd.

While it talks it does not listen (the optical link is half duplex in practice).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from iskra_me162.errors import ConfigError
from iskra_me162.protocols.iec62056_21 import BAUD_RATES, bcc
from iskra_me162.simulator.counters import EnergyCounters, Registers
from iskra_me162.simulator.line import byte_time, with_parity_bit
from iskra_me162.simulator.profiles import ME162, Profile, Quantity

STX = 0x02
ETX = 0x03
LISTEN_BAUD = 300  # a mode C meter always listens at 300 Bd outside a readout
_INBOX_LIMIT = 128  # longest request is 37 bytes; older unterminated noise is forgotten

_REQUEST_RE = re.compile(rb"/\?([0-9A-Za-z ]{0,32})!\r\n\Z")
_ACK_RE = re.compile(rb"\x06([0-9])([0-9])([0-9])\r\n\Z")
_SERIAL_RE = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True)
class Faults:
    """Ways the simulated meter (or its IR head) misbehaves. All off by default.

    ``*_every`` = N spoils readouts N, 2N, 3N ... (counted from 1 since start); when several
    apply to the same readout, truncation wins over a flipped byte, which wins over a bad BCC.
    """

    echo: bool = False  # the head sends every byte the reader writes straight back
    noise: int = 0  # this many noise bytes before the ident
    noise_byte: int = 0x7F  # 0x7F (seen on real heads) or 0x00
    ignore_baud: bool = False  # proposes its baud char but keeps talking at 300 Bd after ACK
    corrupt_every: int = 0  # flips one bit of a 1.8.0 digit: still parses, only the BCC fails
    bad_bcc_every: int = 0  # intact data, wrong BCC
    truncate_every: int = 0  # stops half-way through the data block (no ETX, no BCC)
    silent: bool = False  # answers nothing (head not on the meter, meter dead)
    lockout: float = 0.0  # seconds after a session during which requests are ignored
    high_bit: bool = False  # bytes carry their parity bit in bit 7 (7E1 read as 8N1)
    # Content faults a checksum cannot catch (a meter firmware or register glitch): the block
    # is well formed and its BCC is right, only what it says is wrong.
    glitch_every: int = 0  # the import total and tariff-1 register read glitch_wh Wh off
    glitch_wh: int = 0  # > 0: a jump ahead, < 0: backwards (the registers themselves go on)
    omit_every: int = 0  # the line with OBIS code omit_code is left out
    omit_code: str = ""

    def __post_init__(self) -> None:
        for name in (
            "noise",
            "corrupt_every",
            "bad_bcc_every",
            "truncate_every",
            "glitch_every",
            "omit_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, not {value!r}")
        if self.noise_byte not in range(256):
            raise ConfigError(f"noise_byte must be 0..255, not {self.noise_byte!r}")
        if not 0 <= self.lockout <= 86400:
            raise ConfigError(f"lockout must be 0..86400 seconds, not {self.lockout!r}")
        if not isinstance(self.glitch_wh, int) or isinstance(self.glitch_wh, bool):
            raise ConfigError(f"glitch_wh must be a whole number of Wh, not {self.glitch_wh!r}")


def _default_import(tariffs: int) -> tuple[int, ...]:
    return (1_234_567, 765_432, 0, 0)[:tariffs] if tariffs > 1 else (1_999_999,)


def _default_export(tariffs: int) -> tuple[int, ...]:
    return (13_465,) + (0,) * (tariffs - 1)


@dataclass(frozen=True)
class MeterConfig:
    """Everything that defines one simulated meter.

    ``speedup`` shortens the time each character takes on the line (``inf``: no pacing, a
    message arrives at once). It does not shorten the reaction time or the ACK timeout: those
    are windows on the reader's side, and the reader runs on the real clock.
    """

    profile: Profile = ME162
    serial: str = "61234567"
    import_w: int = 500
    export_w: int = 0
    tariff: int = 1
    import_wh: tuple[int, ...] | None = None  # start values per tariff; None: profile default
    export_wh: tuple[int, ...] | None = None
    baud_char: str | None = None  # override the profile's proposed rate
    speedup: float = 1.0
    reaction_time: float | None = None  # None: from the ident's third letter
    ack_timeout: float = 1.5
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not _SERIAL_RE.fullmatch(self.serial):
            raise ConfigError(f"serial must be 1..16 digits, not {self.serial!r}")
        if self.baud_char is not None and self.baud_char not in BAUD_RATES:
            raise ConfigError(f"baud character must be one of 0..6, not {self.baud_char!r}")
        if not self.speedup > 0:
            raise ConfigError(f"speedup must be > 0 (inf: no pacing), not {self.speedup!r}")
        if self.reaction_time is not None and not 0 <= self.reaction_time <= 10:
            raise ConfigError(f"reaction time must be 0..10 s, not {self.reaction_time!r}")
        if not 0 < self.ack_timeout <= 60:
            raise ConfigError(f"ACK timeout must be 0..60 s, not {self.ack_timeout!r}")
        for name in ("import_wh", "export_wh"):
            value = getattr(self, name)
            if value is not None and len(value) != self.profile.tariffs:
                raise ConfigError(
                    f"{name} needs {self.profile.tariffs} values for profile "
                    f"{self.profile.name}, got {len(value)}"
                )

    @property
    def start_import_wh(self) -> tuple[int, ...]:
        return self.import_wh or _default_import(self.profile.tariffs)

    @property
    def start_export_wh(self) -> tuple[int, ...]:
        return self.export_wh or _default_export(self.profile.tariffs)

    @property
    def proposed_baud_char(self) -> str:
        return self.baud_char or self.profile.baud_char

    @property
    def ident_line(self) -> bytes:
        return f"/{self.profile.ident(self.proposed_baud_char)}\r\n".encode("ascii")

    @property
    def reaction(self) -> float:
        if self.reaction_time is not None:
            return self.reaction_time
        return self.profile.reaction_time


@dataclass(frozen=True)
class ServedReadout:
    """What the meter put into one data readout, for people and tests to compare against.

    ``lines`` are the values as formatted before any fault was applied; ``fault`` names the
    damage done on purpose ("" when the readout went out intact).
    """

    number: int
    at: float
    baud: int
    lines: tuple[tuple[str, str], ...]
    fault: str = ""

    def value(self, code: str) -> str:
        for line_code, value in self.lines:
            if line_code == code:
                return value
        raise KeyError(code)


@dataclass(frozen=True)
class Transmission:
    """Bytes the meter puts on the line at ``baud``, first character starting at ``start``."""

    data: bytes
    baud: int
    start: float
    byte_time: float  # seconds per character on the line; 0 = all at once
    readout: ServedReadout | None = None

    @property
    def duration(self) -> float:
        return len(self.data) * self.byte_time

    @property
    def end(self) -> float:
        return self.start + self.duration


class SessionState(Enum):
    IDLE = "idle"
    AWAIT_ACK = "await_ack"


class MeterModel:
    """One simulated meter. Not thread-safe: a runner calls it from one thread at a time."""

    def __init__(self, config: MeterConfig, now: float) -> None:
        self._config = config
        self.faults = config.faults
        self._counters = EnergyCounters(
            now,
            import_wh=config.start_import_wh,
            export_wh=config.start_export_wh,
            import_w=config.import_w,
            export_w=config.export_w,
            tariff=config.tariff,
        )
        self._state = SessionState.IDLE
        self._inbox = bytearray()
        self._busy_until = float("-inf")
        self._ack_deadline = float("-inf")
        self._lockout_until = float("-inf")
        self._readouts = 0
        self.history: deque[ServedReadout] = deque(maxlen=64)

    @property
    def config(self) -> MeterConfig:
        return self._config

    @property
    def listen_baud(self) -> int:
        return LISTEN_BAUD

    def state(self, now: float) -> SessionState:
        self._expire(now)
        return self._state

    def busy_until(self) -> float:
        """When the last scheduled character has left the meter."""
        return self._busy_until

    # -- counters -------------------------------------------------------------------------

    def registers(self, now: float) -> Registers:
        return self._counters.snapshot(now)

    def set_power(
        self, now: float, import_w: int | None = None, export_w: int | None = None
    ) -> None:
        self._counters.set_power(now, import_w, export_w)

    def set_tariff(self, now: float, tariff: int) -> None:
        self._counters.set_tariff(now, tariff)

    # -- protocol -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Transmission]:
        """Feed bytes that started arriving at ``now`` (at 300 Bd); return the meter's answer."""
        received_at = now + len(data) * byte_time(LISTEN_BAUD, self._config.speedup)
        self._expire(received_at)
        if received_at < self._busy_until:
            return []  # talking, not listening
        for byte in data:
            self._inbox.append(byte & 0x7F)
            if byte & 0x7F != 0x0A:
                continue
            message = bytes(self._inbox)
            self._inbox.clear()
            answer = self._on_message(message, received_at)
            if answer:
                return answer  # the rest arrived while the meter was about to talk
        del self._inbox[:-_INBOX_LIMIT]
        return []

    def _expire(self, now: float) -> None:
        if self._state is SessionState.AWAIT_ACK and now > self._ack_deadline:
            self._end_session(self._ack_deadline)

    def _end_session(self, at: float) -> None:
        self._state = SessionState.IDLE
        self._lockout_until = at + self.faults.lockout

    def _on_message(self, message: bytes, now: float) -> list[Transmission]:
        request = _REQUEST_RE.search(message)
        if request is not None:
            return self._on_request(request.group(1).decode("ascii"), now)
        ack = _ACK_RE.search(message)
        if ack is not None and self._state is SessionState.AWAIT_ACK:
            protocol, baud_char, mode = (chr(group[0]) for group in ack.groups())
            return self._on_ack(protocol, baud_char, mode, now)
        if self._state is SessionState.AWAIT_ACK:
            self._end_session(now)  # a wrong message ends the session, as on a real meter
        return []

    def _on_request(self, address: str, now: float) -> list[Transmission]:
        if self._state is SessionState.AWAIT_ACK:
            self._end_session(now)
        if self.faults.silent or now < self._lockout_until:
            return []
        if address and address.lstrip("0") != self._config.serial.lstrip("0"):
            return []  # addressed to another meter on the same bus
        noise = bytes([self.faults.noise_byte]) * self.faults.noise
        ident = self._transmit(noise + self._config.ident_line, LISTEN_BAUD, now + self._reaction)
        self._state = SessionState.AWAIT_ACK
        self._ack_deadline = ident.end + self._config.ack_timeout
        return [ident]

    def _on_ack(self, protocol: str, baud_char: str, mode: str, now: float) -> list[Transmission]:
        # Protocol '0' = normal; mode '0' = data readout. Programming mode ('1') is not offered,
        # and a rate above the proposed one is refused: both end the session without an answer.
        refused = protocol != "0" or mode != "0" or baud_char > self._config.proposed_baud_char
        if refused or self.faults.silent:
            self._end_session(now)
            return []
        baud = LISTEN_BAUD if self.faults.ignore_baud else BAUD_RATES[baud_char]
        self._readouts += 1
        lines = self._config.profile.data_lines(self._config.serial, self._counters.snapshot(now))
        block, fault = self._readout_block(lines, self._readouts)
        served = ServedReadout(self._readouts, now, baud, lines, fault)
        self.history.append(served)
        readout = self._transmit(block, baud, now + self._reaction, served)
        self._end_session(readout.end)
        return [readout]

    @property
    def _reaction(self) -> float:
        return self._config.reaction

    def _transmit(
        self, data: bytes, baud: int, start: float, readout: ServedReadout | None = None
    ) -> Transmission:
        if self.faults.high_bit:
            data = with_parity_bit(data)
        transmission = Transmission(
            data, baud, start, byte_time(baud, self._config.speedup), readout
        )
        self._busy_until = transmission.end
        return transmission

    def _readout_block(self, lines: tuple[tuple[str, str], ...], number: int) -> tuple[bytes, str]:
        """``STX data ! CR LF ETX BCC``, spoilt as the faults ask for readout ``number``."""
        lines, content_fault = self._content_faults(lines, number)
        text = [f"{code}({value})\r\n".encode("ascii") for code, value in lines]
        payload = b"".join(text) + b"!\r\n" + bytes([ETX])
        check = bcc(payload)
        faults = self.faults
        if _every(faults.truncate_every, number):
            return bytes([STX]) + payload[: len(payload) // 2], "truncated"
        if _every(faults.corrupt_every, number):
            flipped = b"".join(self._flip_digit(text)) + b"!\r\n" + bytes([ETX])
            return bytes([STX]) + flipped + bytes([check]), "corrupt"
        if _every(faults.bad_bcc_every, number):
            return bytes([STX]) + payload + bytes([check ^ 0x01]), "bad_bcc"
        return bytes([STX]) + payload + bytes([check]), content_fault

    def _content_faults(
        self, lines: tuple[tuple[str, str], ...], number: int
    ) -> tuple[tuple[tuple[str, str], ...], str]:
        """The lines as a glitching meter would send them (valid BCC, wrong content)."""
        faults = self.faults
        names = []
        if _every(faults.glitch_every, number) and faults.glitch_wh:
            glitched = {
                spec.code
                for spec in self._config.profile.lines
                if spec.quantity is Quantity.IMPORT_TOTAL
                or (spec.quantity is Quantity.IMPORT_TARIFF and spec.tariff == 1)
            }
            lines = tuple(
                (code, _shift_energy(value, faults.glitch_wh) if code in glitched else value)
                for code, value in lines
            )
            names.append("glitch")
        if _every(faults.omit_every, number) and faults.omit_code:
            lines = tuple((code, value) for code, value in lines if code != faults.omit_code)
            names.append("omit")
        return lines, "+".join(names)

    def _flip_digit(self, text: list[bytes]) -> list[bytes]:
        """Flip bit 0 of the last digit of the import total (a digit stays a digit)."""
        specs = self._config.profile.lines
        index = next(
            (i for i, spec in enumerate(specs) if spec.quantity is Quantity.IMPORT_TOTAL),
            len(specs) - 1,
        )
        line = bytearray(text[index])
        digits = [i for i, byte in enumerate(line) if 0x30 <= byte <= 0x39]
        line[digits[-1]] ^= 0x01
        return [*text[:index], bytes(line), *text[index + 1 :]]


def _every(period: int, number: int) -> bool:
    return period > 0 and number % period == 0


def _shift_energy(value: str, wh: int) -> str:
    """``0001234.567*kWh`` moved by ``wh`` Wh (not below 0), in the same format."""
    number, _, unit = value.partition("*")
    whole, _, fraction = number.partition(".")
    total = max(int(whole) * 1000 + int(fraction) + wh, 0)
    return f"{total // 1000:0{len(whole)}d}.{total % 1000:03d}*{unit}"
