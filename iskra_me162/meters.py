"""A meter = a port + a protocol: "take one readout" for IEC 62056-21 mode C meters.

This is where the protocol's timing lives (reaction times, the ACK deadline, the baud switch and
the fall-back to 300 baud); the bytes themselves are built and checked by the sans-I/O core in
:mod:`iskra_me162.protocols.iec62056_21`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from iskra_me162.errors import MeterTimeout, ProtocolError, WrongProtocol
from iskra_me162.obis import Reading
from iskra_me162.port import Port
from iskra_me162.protocols import iec62056_21 as iec
from iskra_me162.readout import MeterIdentity, Readout

log = logging.getLogger(__name__)

INITIAL_BAUD = 300
# IEC 62056-21: the meter answers within 1.5 s (t_r max) and leaves at most 1.5 s between two
# characters (t_a). A little slack covers USB latency and a loaded Pi.
FIRST_BYTE_TIMEOUT = 2.0
GAP_TIMEOUT = 1.7
ACK_DEADLINE = 1.5  # the ACK must leave within this time after the identification
# Every session ends, bytes arriving or not: a meter that keeps sending something that never
# becomes a message (a push meter on a mode C setting sends a frame every second) must not hold
# a session forever. Each message gets the time its largest plausible size takes on the wire
# (10 bits a character) plus the first-byte timeout. The largest readout we know is 9.5 kB
# (an MT174 with its load profile registers); 16 kB leaves room.
LONGEST_IDENTIFICATION = iec.MAX_IDENT_LINE + 32  # bytes, with an echoed request before it
LONGEST_READOUT = 16 * 1024
# Every SML frame starts with this; a mode C meter never sends it (its 7-bit characters never
# repeat ESC four times). On a pty or a head that passes bytes through it arrives as it is.
SML_START = b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01"
PUSHES_SML = (
    "the meter pushes SML frames (it sent the SML start sequence without being asked): "
    'it is an SML meter, set protocol = "sml"'
)
# After a failed readout at the meter's high speed, this many good readouts at 300 baud pass
# before the high speed is tried again: a head that cannot switch costs one failure per try.
HIGHSPEED_RETRY_AFTER = 5
# Serial-number registers, in order of preference, to name the meter.
SERIAL_REGISTERS = ("96.1.0", "0.0.0", "96.1.255")


T = TypeVar("T")


class _Receiver(Protocol[T]):
    """The shape both sans-I/O receivers of a mode C session share."""

    def feed(self, data: bytes) -> None: ...

    def result(self) -> T | None: ...


class IecMeter:
    """Reads an IEC 62056-21 meter in mode C: request, identification, ACK, data readout."""

    pushes = False  # the daemon asks for each readout

    def __init__(
        self,
        port: Port,
        use_highspeed: bool,
        baud_switch_delay: float,
        longest_readout: int = LONGEST_READOUT,
    ) -> None:
        self.port = port
        self.longest_readout = longest_readout  # bytes; sets the data message's deadline
        self.use_highspeed = use_highspeed
        self.baud_switch_delay = baud_switch_delay
        self._low_speed_readouts_left = 0  # >0: high speed failed recently, stay at 300 baud
        self.fallbacks = 0  # readouts at high speed that failed (the next ones use 300 baud)
        self.identification: iec.Identification | None = None  # of the latest session

    def close(self) -> None:
        self.port.close()

    @property
    def highspeed_now(self) -> bool:
        return self.use_highspeed and self._low_speed_readouts_left == 0

    def read(self) -> Readout:
        """One complete session; raises PortError, MeterTimeout or ProtocolError on failure."""
        ident, ack, leftover, switch_to = self._start_session(iec.READOUT_MODE)
        try:
            block = self._receive_data(ack, leftover)
        except (MeterTimeout, ProtocolError) as error:
            if switch_to is not None:
                self.fallbacks += 1
                self._low_speed_readouts_left = HIGHSPEED_RETRY_AFTER
                log.warning(
                    "readout at %d baud failed (%s); the next readouts use 300 baud",
                    switch_to,
                    error,
                )
            raise
        if switch_to is None and self._low_speed_readouts_left:
            self._low_speed_readouts_left -= 1
            if self._low_speed_readouts_left == 0:
                log.info("trying the meter's high speed again on the next readout")
        return Readout(
            identity=_identity(ident, block.readings),
            readings=block.readings,
            wall_time=datetime.now(UTC),
            monotonic=time.monotonic(),
        )

    def _start_session(self, option: str) -> tuple[iec.Identification, bytes, bytes, int | None]:
        """Request, identification, ACK with ``option`` and the baud switch: (identification,
        the ACK sent, bytes that came after the identification, the baud rate switched to)."""
        self.port.open()
        self.port.set_baudrate(INITIAL_BAUD)
        self.port.discard_input()
        self.port.write(iec.REQUEST)

        ident, leftover = self._receive_identification()
        ident_time = time.monotonic()
        self.identification = ident
        log.debug(
            "identification %s: manufacturer %s, baud character %r (%s), reaction time %d ms",
            ident.ident,
            ident.manufacturer,
            ident.baud_char,
            ident.baudrate or "no switch",
            ident.reaction_time * 1000,
        )
        data_baud = iec.data_baudrate(ident, highspeed=self.highspeed_now)
        switch_to = data_baud if data_baud != INITIAL_BAUD else None
        ack = iec.build_ack(ident, highspeed=switch_to is not None, option=option)

        # The meter needs its reaction time before it listens again; the ACK must still leave
        # within 1.5 s of the identification.
        wait = ident.reaction_time - (time.monotonic() - ident_time)
        if wait > 0:
            time.sleep(wait)
        self.port.write(ack)
        if time.monotonic() - ident_time > ACK_DEADLINE:
            log.warning(
                "the ACK left %.2f s after the identification", time.monotonic() - ident_time
            )
        if switch_to is not None:
            time.sleep(self.baud_switch_delay)
            self.port.set_baudrate(switch_to)
        return ident, ack, leftover, switch_to

    def _receive_identification(self) -> tuple[iec.Identification, bytes]:
        """The identification, and any bytes that came after its line in the same read."""
        receiver = iec.IdentificationReceiver()
        ident = self._receive(receiver, "identification", INITIAL_BAUD, LONGEST_IDENTIFICATION)
        return ident, receiver.trailing_data

    def _receive_data(self, ack: bytes, leftover: bytes) -> iec.DataBlock:
        baud = self.port.baudrate
        return self._receive(
            iec.DataReceiver(ack=ack), "data readout", baud, self.longest_readout, leftover
        )

    def _receive(
        self,
        receiver: _Receiver[T],
        what: str,
        baud: int,
        longest: int,
        leftover: bytes = b"",
        first_read_at: float | None = None,
    ) -> T:
        """Feed ``receiver`` until it has its message: the first byte may take the meter's
        reaction time, later ones at most the inter-character gap, the whole message at most
        the time ``longest`` bytes take at ``baud``. Bytes of an SML frame end it at once.

        ``first_read_at``: sleep until then (when the message should be there whole) before
        the first read, so that it takes one read instead of one per piece the line hands over
        (each a wake-up); the time slept counts against the first-byte timeout and the
        deadline."""
        started = time.monotonic()
        limit = FIRST_BYTE_TIMEOUT + longest * 10 / baud
        deadline = started + limit
        received = bytearray()  # for the SML check: its start sequence may span two reads
        if leftover:
            receiver.feed(leftover)
        if first_read_at is not None:
            self.port.sleep_until(min(first_read_at, started + FIRST_BYTE_TIMEOUT))
        timeout = FIRST_BYTE_TIMEOUT - (time.monotonic() - started)
        while (message := receiver.result()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MeterTimeout(_unfinished(what, limit, received))
            try:
                chunk = self.port.read_some(min(timeout, remaining))
            except MeterTimeout as silent:
                if time.monotonic() >= deadline:  # bytes kept coming, but never a message
                    raise MeterTimeout(_unfinished(what, limit, received)) from None
                if what == "data readout" and (received or leftover):
                    raise MeterTimeout(f"the data readout stopped half-way: {silent}") from None
                raise  # the meter went silent
            received += chunk
            if SML_START in received:
                raise WrongProtocol(PUSHES_SML)
            del received[: -len(SML_START) - 64]  # keep the tail, for the check and the message
            receiver.feed(chunk)
            timeout = GAP_TIMEOUT
        return message


def _unfinished(what: str, limit: float, tail: bytes) -> str:
    if not tail or what != "identification":
        return f"the {what} did not finish within {limit:.0f} s"
    return (
        f"the {what} did not finish within {limit:.0f} s although bytes kept arriving (last: "
        f"{tail[-16:].hex(' ')}): if the meter sends by itself without being asked, it is "
        'an SML push meter (set protocol = "sml"); otherwise check the head and its alignment'
    )


def _identity(ident: iec.Identification, readings: tuple[Reading, ...]) -> MeterIdentity:
    serial = ""
    for cde in SERIAL_REGISTERS:
        for reading in readings:
            code = reading.code
            # Any medium (A) is fine here: the serial is 0-0:C.1.0 on some meters.
            if code.cde == cde and code.f in (None, 255) and reading.raw.strip():
                serial = reading.raw.strip()
                break
        if serial:
            break
    return MeterIdentity(manufacturer=ident.manufacturer, model=ident.ident, serial=serial)
