"""IEC 62056-21 (formerly IEC 1107) mode C readout, without any I/O.

Bytes go in, an :class:`Identification` and :class:`~iskra_me162.obis.Reading` objects come out.
Opening the port, 7E1 framing, masking to 7 bits, sleeping the reaction time, switching the baud
rate and timeouts belong to the port layer, which drives this module like this (mode C)::

    port.write(REQUEST)                                   # "/?!\\r\\n" at 300 Bd 7E1
    ident_rx = IdentificationReceiver()
    while (ident := ident_rx.result()) is None:           # skips noise and our echoed request
        ident_rx.feed(port.read(...))                     # ProtocolError on a garbage ident line
    ack = build_ack(ident, highspeed=True)                # "\\x06" "0" Z "0" "\\r\\n"
    # wait ident.reaction_time, write ack at 300 Bd, drain, then switch to
    # data_baudrate(ident, highspeed=True)
    data_rx = DataReceiver(ack=ack)
    data_rx.feed(ident_rx.trailing_data)                  # bytes that came after the ident line
    while (block := data_rx.result()) is None:
        data_rx.feed(port.read(...))                      # ChecksumError on a bad BCC
    block.readings                                        # tuple[Reading, ...]

Both receivers accept bytes split anywhere (one at a time is fine), keep bounded buffers, skip
noise before ``/`` and before STX, and raise only :class:`~iskra_me162.errors.ProtocolError` or
its subclass :class:`~iskra_me162.errors.ChecksumError`. A receiver stays failed after an error
(re-raising it), as a readout with a bad checksum must be dropped whole.

Data lines are parsed by :func:`parse_data_lines` (generic, never raises: malformed lines are
logged at DEBUG and skipped). :func:`parse_readout` parses a whole captured telegram of any
framing (mode C, D0 push telegrams, DSMR P1) without a checksum policy, for tests and tools.
The daemon reads no push telegrams over IEC 62056-21, so there is no receiver for them and no
DSMR CRC check here.

How a value group becomes a :class:`~iskra_me162.obis.Reading`:

* ``number*unit`` is numeric (``Decimal``, exact); ``*`` with nothing after it gives unit ``""``.
* a number without ``*`` is numeric (unit None) only if it has a decimal point and the register
  is a physical quantity (value group C 1..95): EMH and Hager send energy as ``032942.0231``,
  while integers without a unit are serial numbers, counters and status words, and C = 0 / 96..99
  registers are identifiers (``1-0:0.2.0(1.03)`` is a firmware version, not a quantity).
* everything else is text: ``value`` None, ``raw`` keeps the characters exactly.
* several groups on one line: the first is the value, the others go to ``extra`` in line order;
  DSMR puts a time stamp first (``0-1:24.2.1(161129200000W)(00981.443*m3)``), so a leading
  ``YYMMDDhhmmssX`` stamp followed by a numeric group makes the second group the value. For
  text lines ``"|".join((reading.raw, *reading.extra))`` gives every group in order.

Programming mode (option 1) reads single registers, read-only and without a password:
``build_ack(ident, True, option=PROGRAMMING_MODE)``, :class:`OperandReceiver` (P0), then per
register :func:`build_read` and :class:`RegisterReceiver`, :func:`build_break` at the end. Every
message the daemon may send passes :func:`is_allowed_command` (:data:`ALLOWED_COMMANDS`).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.obis import ObisCode, Reading

log = logging.getLogger(__name__)

STX = 0x02
ETX = 0x03
ACK = 0x06

REQUEST = b"/?!\r\n"
"""Mode C sign-on (request message without device address), sent at 300 Bd 7E1."""

BAUD_RATES: dict[str, int] = {
    "0": 300,
    "1": 600,
    "2": 1200,
    "3": 2400,
    "4": 4800,
    "5": 9600,
    "6": 19200,
}
"""Mode C baud rate characters of the identification message. Mode A/B meters answer with other
characters; then the baud rate is not switched."""

INITIAL_BAUDRATE = 300

# The standard allows 16 identification characters; real meters exceed it a little, so allow
# room, but not so much that a noise burst that happens to start with "/" fills memory.
MAX_IDENT_LINE = 128
# A readout is a few hundred bytes (ME162 ~200 B); an MT174 with full history is 9.5 kB.
MAX_BLOCK_SIZE = 64 * 1024

_REACTION_TIME_FAST = 0.02  # lower-case third manufacturer letter: meter answers after 20 ms
_REACTION_TIME_STANDARD = 0.2

_IDENT_RE = re.compile(rb"/([A-Za-z]{3})([!-~])(?:\\([!-~]))?([ -~]*)")
_DATA_SET_RE = re.compile(r"\s*([0-9A-Za-z][0-9A-Za-z:.*&-]*)((?:\([^()]*\))+)", re.ASCII)
_VALUE_RE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:\*([^\s()*]*))?", re.ASCII)
_DSMR_TIME_RE = re.compile(r"\d{12}[SW]", re.ASCII)
_PHYSICAL_C = range(1, 96)  # OBIS value group C for quantities (0 and 96..99 are abstract)


@dataclass(frozen=True, slots=True)
class Identification:
    """The meter's identification message ``/XXXZ[\\W]ident``.

    ``manufacturer`` is the three-letter flag (``ISK``, ``ISk``); ``baud_char`` the character
    ``Z``; ``baudrate`` the highest rate it offers in mode C (None for mode A/B characters or
    reserved ones: no switch then); ``enhanced`` the ``W`` of an ``\\W`` capability pair (``"2"``
    in ``/ISk5\\2MT382-1000``) or None; ``ident`` the rest of the line; ``reaction_time`` the
    minimum pause in seconds before we may send (0.02 when the third manufacturer letter is
    lower case, else 0.2); ``raw`` the whole line from ``/`` without its line end.
    """

    manufacturer: str
    baud_char: str
    baudrate: int | None
    enhanced: str | None
    ident: str
    reaction_time: float
    raw: bytes


@dataclass(frozen=True, slots=True)
class DataBlock:
    """A mode C data message whose BCC was verified.

    ``text`` is everything between STX and ETX (ending in ``!`` CR LF), decoded as Latin-1 so
    that every byte maps to one character; ``readings`` the registers parsed from it.
    """

    text: str
    readings: tuple[Reading, ...]


def bcc(data: bytes) -> int:
    """Block check character: XOR of all bytes of ``data`` (0 for no bytes).

    For a mode C message pass the bytes after STX up to and including ETX.
    """
    result = 0
    for byte in data:
        result ^= byte
    return result


def build_ack(identification: Identification, highspeed: bool, option: str = "0") -> bytes:
    """The acknowledgement/option select message: ``ACK 0 Z Y CR LF``.

    With ``highspeed`` the meter's own baud character is echoed, so it switches to its top rate
    (see :func:`data_baudrate`); without it, or when the meter offers no mode C rate, ``Z`` is
    ``0`` and both sides stay at 300 Bd. ``option`` Y: ``"0"`` readout, ``"1"`` programming mode.
    """
    if option not in (READOUT_MODE, PROGRAMMING_MODE):
        raise ValueError(f"option must be '0' (readout) or '1' (programming), not {option!r}")
    switch = highspeed and identification.baudrate is not None
    baud_char = identification.baud_char if switch else "0"
    return bytes((ACK, 0x30, ord(baud_char), ord(option), 0x0D, 0x0A))


def data_baudrate(identification: Identification, highspeed: bool) -> int:
    """The baud rate to use after sending ``build_ack(identification, highspeed)``."""
    if highspeed and identification.baudrate is not None:
        return identification.baudrate
    return INITIAL_BAUDRATE


def parse_identification(line: bytes) -> Identification:
    """Parse one identification line (``/`` up to, not including, CR LF) or raise ProtocolError."""
    match = _IDENT_RE.fullmatch(line)
    if match is None:
        hint = ""
        if any(byte >= 0x80 for byte in line):
            hint = " (bytes with the 8th bit set: a 7E1 line read as 8N1? mask to 7 bits)"
        raise ProtocolError(f"not an identification line: {line[:48]!r}{hint}")
    manufacturer_b, baud_b, enhanced_b, ident_b = match.groups()
    manufacturer = manufacturer_b.decode("ascii")
    baud_char = baud_b.decode("ascii")
    return Identification(
        manufacturer=manufacturer,
        baud_char=baud_char,
        baudrate=BAUD_RATES.get(baud_char),
        enhanced=enhanced_b.decode("ascii") if enhanced_b is not None else None,
        ident=ident_b.decode("ascii"),
        reaction_time=(
            _REACTION_TIME_FAST if manufacturer[2].islower() else _REACTION_TIME_STANDARD
        ),
        raw=bytes(line),
    )


def _is_request_echo(line: bytes) -> bool:
    # IR heads echo what we send: "/?!" or "/?<address>!". No identification starts with "/?"
    # because the manufacturer flag is three letters.
    return line.startswith(b"/?")


class IdentificationReceiver:
    """Finds and parses the identification line in the bytes that follow the request.

    Everything before ``/`` is skipped (0x7F or NUL noise), and so are echoes of our request.
    A ``/`` inside a candidate line restarts it (``/`` never occurs in an identification), so
    noise that contains a slash does not hide the real line. :meth:`feed` raises ProtocolError
    when the line after ``/`` is not an identification or exceeds :data:`MAX_IDENT_LINE` bytes.
    """

    def __init__(self) -> None:
        self._line: bytearray | None = None  # None while looking for "/"
        self._result: Identification | None = None
        self._error: ProtocolError | None = None
        self._trailing = bytearray()
        self._skipped = 0
        self._parity_warned = False

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the identification line (feed them to the next receiver)."""
        return bytes(self._trailing)

    def result(self) -> Identification | None:
        """The identification once its line is complete, else None; re-raises a past error."""
        if self._error is not None:
            raise self._error
        return self._result

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the meter, in any chunking."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            self._keep_trailing(data)
            return
        try:
            self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            raise

    def _warn_if_parity(self, data: bytes) -> None:
        # 0xAF is "/" with an even-parity bit: the usual first-setup mistake (port at 8N1
        # without 7-bit masking) otherwise shows up only as "the meter does not answer".
        if not self._parity_warned and b"\xaf" in data:
            self._parity_warned = True
            log.warning(
                "received 0xAF, which is '/' with the 8th bit set: the port may read the 7E1 "
                "line as 8N1; configure 7E1 or 7-bit masking"
            )

    def _keep_trailing(self, data: bytes) -> None:
        if len(self._trailing) + len(data) > MAX_BLOCK_SIZE:
            raise ProtocolError(f"more than {MAX_BLOCK_SIZE} bytes after the identification")
        self._trailing += data

    def _feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._line is None:
                slash = data.find(b"/", pos)
                if slash < 0:
                    self._skipped += end - pos
                    self._warn_if_parity(data)
                    return
                self._skipped += slash - pos
                self._line = bytearray()
                pos = slash
            newline = data.find(b"\n", pos)
            stop = end if newline < 0 else newline
            restart = data.rfind(b"/", pos + 1 if not self._line else pos, stop)
            if restart >= 0:
                # A later "/" starts a new candidate: what came before it was noise.
                self._skipped += len(self._line) + restart - pos
                self._line = bytearray(data[restart:stop])
            else:
                self._line += data[pos:stop]
            if len(self._line) > MAX_IDENT_LINE:
                raise ProtocolError(
                    f"identification line longer than {MAX_IDENT_LINE} bytes: "
                    f"{bytes(self._line[:48])!r}..."
                )
            if newline < 0:
                return
            pos = newline + 1
            line = bytes(self._line).rstrip(b"\r")
            self._line = None
            if _is_request_echo(line):
                log.debug("skipped echo of our request: %r", line)
                continue
            self._result = parse_identification(line)
            if self._skipped:
                log.debug("skipped %d bytes of noise before the identification", self._skipped)
            self._trailing = bytearray(data[pos:])
            return


class DataReceiver:
    """Receives one mode C data message ``STX data ! CR LF ETX BCC`` and verifies its BCC.

    Everything before STX is discarded: the IR head's echo of our ACK (pass it as ``ack`` so
    the log can say so), line noise, stray CR LF. :meth:`feed` raises ChecksumError when the BCC
    does not match and ProtocolError when the block does not end with ``!`` or exceeds
    ``max_size``; the values of such a block are never returned, and the receiver stays failed.
    """

    def __init__(self, ack: bytes | None = None, max_size: int = MAX_BLOCK_SIZE) -> None:
        self._ack = ack
        self._max_size = max_size
        self._started = False
        self._skipped = 0
        self._skipped_head = bytearray()  # first bytes before STX, for the debug log
        self._block = bytearray()  # after STX, up to and including ETX
        self._have_etx = False
        self._result: DataBlock | None = None
        self._error: ProtocolError | None = None
        self._trailing = bytearray()

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the BCC (0x7F noise on some heads); not part of the readout."""
        return bytes(self._trailing)

    def result(self) -> DataBlock | None:
        """The verified block once ETX and BCC arrived, else None; re-raises a past error."""
        if self._error is not None:
            raise self._error
        return self._result

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the meter, in any chunking."""
        if self._error is not None:
            raise self._error
        try:
            if self._result is not None:
                self._keep_trailing(data)
            else:
                self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            raise

    def _keep_trailing(self, data: bytes) -> None:
        if len(self._trailing) + len(data) > self._max_size:
            raise ProtocolError(f"more than {self._max_size} bytes after the data block")
        self._trailing += data

    def _feed(self, data: bytes) -> None:
        pos = 0
        if not self._started:
            stx = data.find(STX)
            if stx < 0:
                self._skip(data)
                return
            self._skip(data[:stx])
            self._started = True
            self._log_skipped()
            pos = stx + 1
        if not self._have_etx:
            etx = data.find(ETX, pos)
            stop = len(data) if etx < 0 else etx + 1
            if len(self._block) + stop - pos > self._max_size:
                raise ProtocolError(f"data block longer than {self._max_size} bytes")
            self._block += data[pos:stop]
            if etx < 0:
                return
            self._have_etx = True
            pos = stop
        if pos < len(data):
            self._finish(data[pos])
            self._trailing = bytearray(data[pos + 1 :])

    def _skip(self, data: bytes) -> None:
        self._skipped += len(data)
        if len(self._skipped_head) < 64:
            self._skipped_head += data[: 64 - len(self._skipped_head)]
        if self._skipped > self._max_size:
            raise ProtocolError(f"no STX in the first {self._max_size} bytes")

    def _log_skipped(self) -> None:
        if not self._skipped:
            return
        head = bytes(self._skipped_head)
        if self._ack and head.startswith(self._ack):
            log.debug("stripped the echo of our ACK %r (%d bytes before STX)", head, self._skipped)
        else:
            log.debug("skipped %d bytes before STX: %r", self._skipped, head)

    def _finish(self, given: int) -> None:
        block = bytes(self._block)
        computed = bcc(block)
        if computed != given:
            hint = ""
            if any(byte >= 0x80 for byte in block) or given >= 0x80:
                hint = " (bytes with the 8th bit set: a 7E1 line read as 8N1? mask to 7 bits)"
            raise ChecksumError(
                f"BCC mismatch: the block says 0x{given:02X}, its {len(block)} bytes give "
                f"0x{computed:02X}{hint}"
            )
        body = block[:-1]  # without ETX
        if not body.rstrip(b"\r\n").endswith(b"!"):
            raise ProtocolError(f"data block does not end with '!': ...{body[-32:]!r}")
        text = body.decode("latin-1")
        self._result = DataBlock(text=text, readings=parse_data_lines(text))


def _obis(text: str) -> ObisCode | None:
    try:
        return ObisCode.parse(text)
    except ProtocolError:
        return None


def _number(raw: str, code: ObisCode) -> tuple[Decimal, str | None] | None:
    match = _VALUE_RE.fullmatch(raw)
    if match is None:
        return None
    number, unit = match.groups()
    if unit is None and ("." not in number or code.c not in _PHYSICAL_C):
        return None
    return Decimal(number), unit


def _reading(code: ObisCode, groups: list[str]) -> Reading:
    if len(groups) > 1 and _DSMR_TIME_RE.fullmatch(groups[0]):
        numeric = _number(groups[1], code)
        if numeric is not None:
            extra = (groups[0], *groups[2:])
            return Reading(code, numeric[0], numeric[1], groups[1], extra)
    numeric = _number(groups[0], code)
    extra = tuple(groups[1:])
    if numeric is None:
        return Reading(code, None, None, groups[0], extra)
    return Reading(code, numeric[0], numeric[1], groups[0], extra)


def parse_data_lines(text: str) -> tuple[Reading, ...]:
    """Parse data lines ``[A-B:]C.D.E[*F](value[*unit])[(...)...]`` into readings.

    Lines may end CR LF, LF or LF LF; parsing stops at the end line (``!`` or ``!XXXX``). A
    line may hold several data sets (``F.F(00)C.1(123)``). Lines or trailing parts that are not
    data sets are skipped with a DEBUG log. Never raises.
    """
    readings: list[Reading] = []
    for line in text.splitlines():
        if line.startswith("!"):
            break
        pos = 0
        while pos < len(line):
            match = _DATA_SET_RE.match(line, pos)
            if match is None:
                log.debug("ignored data line part %r", line[pos : pos + 80])
                break
            code_text, groups_text = match.groups()
            code = _obis(code_text)
            if code is None:
                log.debug("ignored data set with unknown code %r", match.group(0)[:80])
            else:
                readings.append(_reading(code, groups_text[1:-1].split(")(")))
            pos = match.end()
    return tuple(readings)


def parse_readout(raw: bytes) -> tuple[Identification | None, tuple[Reading, ...]]:
    """Identification and readings of a whole captured telegram, whatever its framing.

    Accepts mode C readouts (with or without STX/ETX/BCC, with echoes and noise), D0 push
    telegrams and DSMR P1 telegrams. Checksums are NOT checked (:class:`DataReceiver` checks
    the BCC of a mode C readout). Never raises: without a readable identification the whole
    input is parsed as data lines.
    """
    receiver = IdentificationReceiver()
    try:
        receiver.feed(raw)
        identification = receiver.result()
    except ProtocolError as exc:
        log.debug("no identification: %s", exc)
        identification = None
    body = receiver.trailing_data if identification is not None else raw
    stx = body.find(STX)
    if stx >= 0:
        body = body[stx + 1 :]
        etx = body.find(ETX)
        if etx >= 0:
            body = body[:etx]
    return identification, parse_data_lines(body.decode("latin-1"))


# --- programming mode: single registers, read-only ------------------------------------------

SOH, NAK = 0x01, 0x15
READOUT_MODE, PROGRAMMING_MODE = "0", "1"  # the option character Y of ACK 0 Z Y CR LF
REPEAT_REQUEST = bytes((NAK,))  # asks the meter to send its last message again
ALLOWED_COMMANDS = (b"/?", bytes((ACK,)), b"\x01R1\x02", b"\x01B0\x03", REPEAT_REQUEST)
"""How every message the daemon may send begins: request, ACK (option select), R1 (read one
register), B0 (break), NAK (repeat). Never W (write), E (execute) or P (password)."""
_ALLOWED_RE = re.compile(
    rb"/\?[0-9A-Za-z ]{0,32}!\r\n|\x060[0-6][01]\r\n|\x15"
    rb"|\x01R1\x02[0-9A-Za-z:.*&-]{1,32}\(\)\x03.|\x01B0\x03.",
    re.DOTALL,
)
MAX_ANSWER = 512  # bytes before a complete answer; an R1 answer or P0 is ~20
_Answer = TypeVar("_Answer")


class ProgrammingModeRefused(ProtocolError):
    """The meter answered the option-1 ACK with NAK or a data readout: no programming mode."""


@dataclass(frozen=True, slots=True)
class Operand:
    """``SOH P0 STX (d) ETX BCC``: the meter is in programming mode; d (often empty) is ``data``."""

    data: str


@dataclass(frozen=True, slots=True)
class RegisterValue:
    """The answer to ``build_read(register)``: ``reading``, or None when the meter does not know
    the register (``(ERROR)``); ``raw`` is the text between STX and ETX."""

    register: str
    reading: Reading | None
    raw: str


def _command(head: bytes, data: bytes | None) -> bytes:
    body = head + (b"" if data is None else bytes((STX,)) + data) + bytes((ETX,))
    return bytes((SOH,)) + body + bytes((bcc(body),))


def build_read(register: str) -> bytes:
    """``SOH R1 STX register() ETX BCC``: read one register (``"1.8.0"``) in programming mode."""
    ObisCode.parse(register)  # ProtocolError for anything that is not an OBIS code
    return _command(b"R1", register.encode("ascii") + b"()")


def build_break() -> bytes:
    """``SOH B0 ETX BCC``: end the session; the meter listens for a request at 300 Bd again."""
    return _command(b"B0", None)


def is_allowed_command(message: bytes) -> bool:
    """True for one whole message the daemon may send (:data:`ALLOWED_COMMANDS`, a valid BCC)."""
    if not message.startswith(ALLOWED_COMMANDS) or _ALLOWED_RE.fullmatch(message) is None:
        return False
    return message[0] != SOH or bcc(message[1:-1]) == message[-1]


class _AnswerReceiver(ABC, Generic[_Answer]):
    """One message from the meter in programming mode, ``[SOH head] STX data ETX BCC``, split
    anywhere. Skips noise, the echo of our R1 and (``repeat``) of our NAK. A NAK, a bad BCC
    (ChecksumError), a wrong answer or none in MAX_ANSWER bytes raise ProtocolError."""

    _refused: type[ProtocolError] = ProtocolError  # raised for a NAK

    def __init__(self, repeat: bool = False) -> None:
        self._nak_echo = repeat
        self._message = bytearray()  # from SOH or STX on
        self._taken = 0
        self._result: _Answer | None = None
        self._error: ProtocolError | None = None

    def result(self) -> _Answer | None:
        """The answer once its BCC arrived and matched, else None; re-raises a past error."""
        if self._error is not None:
            raise self._error
        return self._result

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the meter; bytes after a complete answer are ignored."""
        self.result()  # re-raises a past error
        try:
            for byte in data:
                if self._result is None:
                    self._take(byte)
        except ProtocolError as exc:
            self._error = exc
            raise

    def _take(self, byte: int) -> None:
        self._taken += 1
        if self._taken > MAX_ANSWER:
            raise ProtocolError(f"no complete answer in {MAX_ANSWER} bytes")
        message = self._message
        if ETX in message:  # this byte is the BCC
            self._message = bytearray()
            if bcc(message[1:]) != byte:
                raise ChecksumError(f"bad BCC 0x{byte:02X} after {bytes(message[:40])!r}")
            body = message[1:-1] if message[0] == SOH else b"\x02" + message[1:-1]
            head, _, data = body.partition(b"\x02")
            if head != b"R1":  # else the echo of our read
                self._result = self._complete(head.decode("latin-1"), data.decode("latin-1"))
        elif message or byte in (SOH, STX):
            message.append(byte)
        elif byte == NAK and self._nak_echo:
            self._nak_echo = False
        elif byte == NAK:
            raise self._refused("the meter answered NAK")

    @abstractmethod
    def _complete(self, head: str, data: str) -> _Answer:
        """The answer of a complete message with a good BCC (``head`` empty without SOH)."""


class OperandReceiver(_AnswerReceiver[Operand]):
    """The answer to ``build_ack(..., option=PROGRAMMING_MODE)``: an :class:`Operand`; NAK or a
    data readout raise :class:`ProgrammingModeRefused`."""

    _refused = ProgrammingModeRefused

    def _complete(self, head: str, data: str) -> Operand:
        if head == "P0" and data.startswith("(") and data.endswith(")"):
            return Operand(data[1:-1])
        if not head:
            raise ProgrammingModeRefused(f"the meter sent a data readout: {data[:40]!r}")
        raise ProtocolError(f"expected SOH P0 STX (d) ETX, got {head!r} {data[:40]!r}")


class RegisterReceiver(_AnswerReceiver[RegisterValue]):
    """The answer to ``build_read(register)`` or (``repeat``) to a REPEAT_REQUEST sent after a
    bad answer: a :class:`RegisterValue`, parsed as a data line."""

    def __init__(self, register: str, repeat: bool = False) -> None:
        super().__init__(repeat)
        self._register, self._cde = register, ObisCode.parse(register).cde

    def _complete(self, head: str, data: str) -> RegisterValue:
        readings = parse_data_lines(self._register + data if data.startswith("(") else data)
        if head or len(readings) != 1 or readings[0].code.cde != self._cde:
            raise ProtocolError(f"not an answer for {self._register}: {head!r} {data[:40]!r}")
        unknown = readings[0].value is None and readings[0].raw.upper().startswith("ER")
        return RegisterValue(self._register, None if unknown else readings[0], data)
