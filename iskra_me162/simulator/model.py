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

Programming mode, when ``MeterConfig.progmode`` is ``"on"`` (a real ME162 has it; the default
``"ignore"`` keeps the meter without it, as the simulator always was): ``ACK 0 Z 1`` CR LF is
answered with ``SOH P0 STX () ETX BCC`` at the agreed rate, and from then on the meter listens
at that rate for

* ``SOH R1 STX <code>() ETX BCC``: ``STX (<value>) ETX BCC`` with the register's value as the
  readout shows it (``1.8.0`` or ``1-0:1.8.0*255`` alike), ``STX (ERROR) ETX BCC`` for a code
  the readout does not have;
* ``SOH B0 ETX BCC``: the session ends; the next request starts a fresh one;
* NAK: the last answer again; a command with a bad BCC, or any other command (W, E, P, B1,
  R2 ...), is answered with NAK and changes nothing.

Each answer comes after the reaction time. After ``progmode_timeout`` seconds (60 s) without a
command the meter drops programming mode and listens for a request at 300 Bd again. A meter
without programming mode answers the option-1 ACK as ``progmode`` says: ``"ignore"`` (no
answer, the session ends), ``"readout"`` (the data readout) or ``"nak"`` (NAK).

Every message the reader sends is kept in :attr:`MeterModel.commands` as a
:class:`ReceivedCommand` with its kind, framed from the bytes as written (before a wrong baud
rate garbles them, and also while the meter talks and does not listen); ``violations`` counts
the ones an IEC 62056-21 reader that only reads must never send. Load profiles
(``MeterConfig.load``, see :mod:`.counters`) change the power in steps at set times.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum

from iskra_me162.errors import ConfigError, ProtocolError
from iskra_me162.obis import ObisCode
from iskra_me162.protocols.iec62056_21 import BAUD_RATES, bcc
from iskra_me162.simulator.counters import EnergyCounters, LoadStep, Registers, check_load
from iskra_me162.simulator.line import byte_time, with_parity_bit
from iskra_me162.simulator.profiles import ME162, Profile, Quantity

SOH = 0x01
STX = 0x02
ETX = 0x03
NAK = 0x15
LF = 0x0A
LISTEN_BAUD = 300  # a mode C meter listens at 300 Bd outside a readout or programming mode
_INBOX_LIMIT = 128  # longest request is 37 bytes; older unterminated noise is forgotten

_REQUEST_RE = re.compile(rb"/\?([0-9A-Za-z ]{0,32})!\r\n\Z")
_ACK_RE = re.compile(rb"\x06([0-9])([0-9])([0-9])\r\n\Z")
_COMMAND_RE = re.compile(rb"\x01([A-Z][0-9])(?:\x02([^\x03]*))?\x03.", re.DOTALL)
_READ_RE = re.compile(rb"([0-9A-Za-z:.*&-]{1,32})\(\)")
_SERIAL_RE = re.compile(r"[0-9]{1,16}")

PROGMODE_ANSWERS = ("on", "ignore", "readout", "nak")
"""What a meter answers an ``ACK 0 Z 1`` with: ``on`` enters programming mode (P0), the others
are meters without it: ``ignore`` (no answer), ``readout`` (a data readout), ``nak`` (NAK)."""
ALLOWED_KINDS = frozenset({"request", "ack", "read", "break", "repeat"})
"""Kinds of :class:`ReceivedCommand` a read-only reader may send; the others are violations:
``forbidden`` (a framed command other than R1/B0, or an ACK for another mode or protocol),
``bad_bcc`` (a command whose BCC is wrong) and ``garbage`` (anything else)."""


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
    # Programming mode. Times count from the meter's start (when the model was made).
    refuse_progmode: str = ""  # while set, option 1 gets this answer: "nak", "ignore", "readout"
    read_bad_bcc_at: int = 0  # the Nth R1 answer (from 1 since start) has a wrong BCC
    silent_from: float = 0.0  # from this second on, for silent_for seconds, the meter hears
    silent_for: float = 0.0  # nothing and says nothing (a hand in front of the head)
    error_registers: tuple[str, ...] = ()  # R1 of these codes gets (ERROR)

    def __post_init__(self) -> None:
        for name in (
            "noise",
            "corrupt_every",
            "bad_bcc_every",
            "truncate_every",
            "glitch_every",
            "omit_every",
            "read_bad_bcc_at",
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
        if self.refuse_progmode not in ("", *PROGMODE_ANSWERS[1:]):
            raise ConfigError(
                f"refuse_progmode must be nak, ignore or readout, not {self.refuse_progmode!r}"
            )
        for name in ("silent_from", "silent_for"):
            if not 0 <= getattr(self, name) <= 10**9:
                raise ConfigError(f"{name} must be >= 0 seconds, not {getattr(self, name)!r}")
        for code in self.error_registers:
            _obis(code, "error_registers")


def _default_import(tariffs: int) -> tuple[int, ...]:
    return (1_234_567, 765_432, 0, 0)[:tariffs] if tariffs > 1 else (1_999_999,)


def _default_export(tariffs: int) -> tuple[int, ...]:
    return (13_465,) + (0,) * (tariffs - 1)


@dataclass(frozen=True)
class MeterConfig:
    """Everything that defines one simulated meter.

    ``speedup`` shortens the time each character takes on the line (``inf``: no pacing, a
    message arrives at once). It does not shorten the reaction time, the ACK timeout or the
    programming-mode timeout: those are windows that the reader meets on the real clock.
    ``load`` / ``export_load`` make the power change in steps (their first step
    replaces ``import_w`` / ``export_w``); ``progmode`` is one of :data:`PROGMODE_ANSWERS`.
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
    load: tuple[LoadStep, ...] = ()  # import power steps; () = import_w all the time
    export_load: tuple[LoadStep, ...] = ()
    progmode: str = "ignore"  # "on": programming mode as on a real ME162
    progmode_timeout: float = 60.0  # seconds without a command before it drops programming mode
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
        for name in ("load", "export_load"):
            try:
                if getattr(self, name):
                    check_load(getattr(self, name))
            except ValueError as error:
                raise ConfigError(f"{name}: {error}") from None
        if self.progmode not in PROGMODE_ANSWERS:
            answers = ", ".join(PROGMODE_ANSWERS)
            raise ConfigError(f"progmode must be one of {answers}, not {self.progmode!r}")
        if not 0 < self.progmode_timeout <= 3600:
            raise ConfigError(f"progmode_timeout must be 0..3600 s, not {self.progmode_timeout!r}")

    @property
    def start_import_w(self) -> int:
        return self.load[0].watts if self.load else self.import_w

    @property
    def start_export_w(self) -> int:
        return self.export_load[0].watts if self.export_load else self.export_w

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
class ServedRead:
    """One R1 answer in programming mode: ``value`` as sent in brackets (None: ``(ERROR)``),
    ``at`` when the command had arrived (the registers' time), ``fault`` "bad_bcc" or ""."""

    number: int
    at: float
    baud: int
    register: str
    value: str | None
    fault: str = ""


@dataclass(frozen=True)
class ReceivedCommand:
    """One message as the reader wrote it, ``at`` the time it started to arrive.

    ``kind`` is ``request``, ``ack``, ``read`` (R1, ``register`` says which), ``break`` (B0),
    ``repeat`` (NAK) or a violation (see :data:`ALLOWED_KINDS`). It was recorded as sent,
    whether the meter heard it or not (it does not while it talks or listens at another rate).
    """

    at: float
    data: bytes
    kind: str
    register: str = ""

    @property
    def allowed(self) -> bool:
        return self.kind in ALLOWED_KINDS


def classify(message: bytes) -> tuple[str, str]:
    """``(kind, register)`` of one message a reader sent (see :class:`ReceivedCommand`)."""
    if _REQUEST_RE.fullmatch(message):
        return "request", ""
    ack = _ACK_RE.fullmatch(message)
    if ack is not None:
        protocol, baud, mode = (chr(group[0]) for group in ack.groups())
        allowed = protocol == "0" and baud in BAUD_RATES and mode in "01"
        return ("ack" if allowed else "forbidden"), ""
    if message == bytes((NAK,)):
        return "repeat", ""
    command = _COMMAND_RE.fullmatch(message)
    if command is None:
        return "garbage", ""
    if bcc(message[1:-1]) != message[-1]:
        return "bad_bcc", ""
    name, data = command.groups()
    read = _READ_RE.fullmatch(data) if name == b"R1" and data is not None else None
    if read is not None:
        return "read", read.group(1).decode("ascii")
    return ("break" if name == b"B0" and data is None else "forbidden"), ""


class _Framer:
    """Cuts bytes into messages: SOH or STX up to ETX and the BCC after it, a lone NAK, or
    anything else up to LF. Unterminated noise longer than the longest message is forgotten."""

    def __init__(self) -> None:
        self.inbox = bytearray()

    def push(self, byte: int) -> bytes | None:
        inbox = self.inbox
        if not inbox and byte == NAK:
            return bytes((NAK,))
        if byte == SOH and inbox and inbox[0] != SOH:
            inbox.clear()  # noise before a command
        inbox.append(byte)
        framed = inbox[0] in (SOH, STX)
        if (framed and 0 <= inbox.find(ETX) == len(inbox) - 2) or (not framed and byte == LF):
            message = bytes(inbox)
            inbox.clear()
            return message
        return None

    def trim(self) -> None:
        del self.inbox[:-_INBOX_LIMIT]


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
    PROGRAMMING = "programming"


class MeterModel:
    """One simulated meter. Not thread-safe: a runner calls it from one thread at a time.

    ``commands`` (the last 10000 :class:`ReceivedCommand`), ``command_counts`` (per kind, since
    start) and ``violations`` (their count) tell what the reader sent; ``history`` holds the
    last 64 readouts and ``reads`` the last 4096 R1 answers.
    """

    def __init__(self, config: MeterConfig, now: float) -> None:
        self._config = config
        self.faults = config.faults
        self._counters = EnergyCounters(
            now,
            import_wh=config.start_import_wh,
            export_wh=config.start_export_wh,
            import_w=config.start_import_w,
            export_w=config.start_export_w,
            tariff=config.tariff,
        )
        self._started = now
        steps = [(now + step.at, "import", step.watts) for step in config.load[1:]]
        steps += [(now + step.at, "export", step.watts) for step in config.export_load[1:]]
        self._steps = deque(sorted(steps))
        self._state = SessionState.IDLE
        self._heard = _Framer()  # what the meter hears: drives the session
        self._sent = _Framer()  # what the reader wrote: the command log
        self._busy_until = float("-inf")
        self._ack_deadline = float("-inf")
        self._lockout_until = float("-inf")
        self._readouts = 0
        self._prog_baud = LISTEN_BAUD
        self._prog_deadline = float("-inf")
        self._last_answer = b""
        self._reads = 0
        self.history: deque[ServedReadout] = deque(maxlen=64)
        self.reads: deque[ServedRead] = deque(maxlen=4096)
        self.commands: deque[ReceivedCommand] = deque(maxlen=10_000)
        self.command_counts: Counter[str] = Counter()
        self.progmode_timeouts = 0  # sessions that ended because the reader fell silent

    @property
    def config(self) -> MeterConfig:
        return self._config

    @property
    def started(self) -> float:
        """The instant the meter started: load steps and silent_from count from here."""
        return self._started

    @property
    def violations(self) -> int:
        """How many messages the reader sent that a read-only reader must not send."""
        return sum(n for kind, n in self.command_counts.items() if kind not in ALLOWED_KINDS)

    @property
    def _inbox(self) -> bytearray:
        return self._heard.inbox

    @property
    def listen_baud(self) -> int:
        """The rate the meter listens at (as of the last call that brought it up to date)."""
        return self._prog_baud if self._state is SessionState.PROGRAMMING else LISTEN_BAUD

    def listen_baud_at(self, now: float) -> int:
        """The rate the meter listens at ``now``: 300 Bd, or the agreed rate in programming mode."""
        self._expire(now)
        return self.listen_baud

    def state(self, now: float) -> SessionState:
        self._expire(now)
        return self._state

    def busy_until(self) -> float:
        """When the last scheduled character has left the meter."""
        return self._busy_until

    # -- counters -------------------------------------------------------------------------

    def _energy(self, now: float) -> EnergyCounters:
        """The counters with every load step up to ``now`` applied at its own instant."""
        while self._steps and self._steps[0][0] <= now:
            at, direction, watts = self._steps.popleft()
            if direction == "import":
                self._counters.set_power(at, import_w=watts)
            else:
                self._counters.set_power(at, export_w=watts)
        return self._counters

    def registers(self, now: float) -> Registers:
        return self._energy(now).snapshot(now)

    def set_power(
        self, now: float, import_w: int | None = None, export_w: int | None = None
    ) -> None:
        """Change the power from ``now`` on (until the next step of a load profile)."""
        self._energy(now).set_power(now, import_w, export_w)

    def set_tariff(self, now: float, tariff: int) -> None:
        self._energy(now).set_tariff(now, tariff)

    # -- protocol -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float, sent: bytes | None = None) -> list[Transmission]:
        """Feed bytes that started arriving at ``now`` at the listening rate; return the answer.

        ``sent`` is what the reader wrote, when a wrong baud rate made the meter hear ``data``
        instead (default: ``data``); the command log is made from it.
        """
        self._log(data if sent is None else sent, now)
        listen = self.listen_baud_at(now)
        received_at = now + len(data) * byte_time(listen, self._config.speedup)
        self._expire(received_at)
        if received_at < self._busy_until:
            return []  # talking, not listening
        if self._deaf(received_at):
            return []
        for byte in data:
            message = self._heard.push(byte & 0x7F)
            if message is None:
                continue
            answer = self._on_message(message, received_at)
            if answer:
                return answer  # the rest arrived while the meter was about to talk
        self._heard.trim()
        return []

    def _log(self, sent: bytes, now: float) -> None:
        for byte in sent:
            message = self._sent.push(byte & 0x7F)
            if message is not None:
                kind, register = classify(message)
                self.commands.append(ReceivedCommand(now, message, kind, register))
                self.command_counts[kind] += 1
        self._sent.trim()

    def _deaf(self, now: float) -> bool:
        start = self._started + self.faults.silent_from
        return self.faults.silent_for > 0 and start <= now < start + self.faults.silent_for

    def _expire(self, now: float) -> None:
        if self._state is SessionState.AWAIT_ACK and now > self._ack_deadline:
            self._end_session(self._ack_deadline)
        elif self._state is SessionState.PROGRAMMING and now > self._prog_deadline:
            self.progmode_timeouts += 1
            self._end_session(self._prog_deadline)

    def _end_session(self, at: float) -> None:
        self._state = SessionState.IDLE
        self._lockout_until = at + self.faults.lockout

    def _on_message(self, message: bytes, now: float) -> list[Transmission]:
        if self._state is SessionState.PROGRAMMING:
            return self._on_command(message, now)
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
        # Protocol '0' = normal; mode '0' = data readout, '1' = programming mode (answered as
        # MeterConfig.progmode says). Other modes and a rate above the proposed one are refused:
        # the session ends without an answer.
        refused = protocol != "0" or mode not in "01" or baud_char > self._config.proposed_baud_char
        if refused or self.faults.silent:
            self._end_session(now)
            return []
        baud = LISTEN_BAUD if self.faults.ignore_baud else BAUD_RATES[baud_char]
        if mode == "1":
            answer = self.faults.refuse_progmode or self._config.progmode
            if answer == "on":
                return [self._enter_programming(baud, now)]
            if answer == "nak":
                nak = self._transmit(bytes((NAK,)), baud, now + self._reaction)
                self._end_session(nak.end)
                return [nak]
            if answer == "ignore":
                self._end_session(now)
                return []
        self._readouts += 1
        registers = self._energy(now).snapshot(now)
        lines = self._config.profile.data_lines(self._config.serial, registers)
        block, fault = self._readout_block(lines, self._readouts)
        served = ServedReadout(self._readouts, now, baud, lines, fault)
        self.history.append(served)
        readout = self._transmit(block, baud, now + self._reaction, served)
        self._end_session(readout.end)
        return [readout]

    # -- programming mode -----------------------------------------------------------------

    def _enter_programming(self, baud: int, now: float) -> Transmission:
        self._state = SessionState.PROGRAMMING
        self._prog_baud = baud
        self._last_answer = _message(b"P0", b"()")
        operand = self._transmit(self._last_answer, baud, now + self._reaction)
        self._prog_deadline = operand.end + self._config.progmode_timeout
        return operand

    def _on_command(self, message: bytes, now: float) -> list[Transmission]:
        kind, register = classify(message)
        if kind == "garbage" or self.faults.silent:
            return []  # noise, a request or an ACK at this rate: not a command
        self._prog_deadline = now + self._config.progmode_timeout
        if kind == "break":
            self._end_session(now)
            return []
        if kind == "read":
            answer = self._answer_read(register, now)
        elif kind == "repeat" and self._last_answer:
            answer = self._transmit(self._last_answer, self._prog_baud, now + self._reaction)
        elif kind in ("bad_bcc", "forbidden"):
            answer = self._transmit(bytes((NAK,)), self._prog_baud, now + self._reaction)
        else:
            return []
        self._prog_deadline = answer.end + self._config.progmode_timeout
        return [answer]

    def _answer_read(self, register: str, now: float) -> Transmission:
        self._reads += 1
        value = self._register_value(register, now)
        payload = bytes((STX,)) + f"({'ERROR' if value is None else value})".encode("ascii")
        payload += bytes((ETX,))
        check = bcc(payload[1:])
        self._last_answer = payload + bytes((check,))  # a repeat (NAK) gets it intact
        fault = "bad_bcc" if self.faults.read_bad_bcc_at == self._reads else ""
        data = payload + bytes((check ^ 0x01,)) if fault else self._last_answer
        self.reads.append(ServedRead(self._reads, now, self._prog_baud, register, value, fault))
        return self._transmit(data, self._prog_baud, now + self._reaction)

    def _register_value(self, register: str, now: float) -> str | None:
        """The value as the readout shows it, or None when the meter has no such register."""
        if any(_same_register(code, register) for code in self.faults.error_registers):
            return None
        registers = self._energy(now).snapshot(now)
        for code, value in self._config.profile.data_lines(self._config.serial, registers):
            if _same_register(code, register):
                return value
        return None

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


def _message(head: bytes, data: bytes) -> bytes:
    """``SOH head STX data ETX BCC``, BCC over everything after SOH."""
    body = head + bytes((STX,)) + data + bytes((ETX,))
    return bytes((SOH,)) + body + bytes((bcc(body),))


def _obis(code: str, what: str) -> ObisCode:
    try:
        return ObisCode.parse(code)
    except ProtocolError:
        raise ConfigError(f"{what}: {code!r} is not an OBIS code") from None


def _same_register(code: str, asked: str) -> bool:
    """``1.8.0`` and ``1-0:1.8.0*255`` name the same register; ``C.1.0`` is ``C.1.0``."""
    if code == asked:
        return True
    try:
        ours, theirs = ObisCode.parse(code), ObisCode.parse(asked)
    except ProtocolError:
        return False
    return ours == theirs or (ours.means(theirs.cde) and theirs.means(ours.cde))
