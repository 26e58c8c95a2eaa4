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

from iskra_me162.errors import MeterTimeout, ProtocolError
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

    def __init__(self, port: Port, use_highspeed: bool, baud_switch_delay: float) -> None:
        self.port = port
        self.use_highspeed = use_highspeed
        self.baud_switch_delay = baud_switch_delay
        self._low_speed_readouts_left = 0  # >0: high speed failed recently, stay at 300 baud

    def close(self) -> None:
        self.port.close()

    @property
    def highspeed_now(self) -> bool:
        return self.use_highspeed and self._low_speed_readouts_left == 0

    def read(self) -> Readout:
        """One complete session; raises PortError, MeterTimeout or ProtocolError on failure."""
        self.port.open()
        self.port.set_baudrate(INITIAL_BAUD)
        self.port.discard_input()
        self.port.write(iec.REQUEST)

        ident, leftover = self._receive_identification()
        ident_time = time.monotonic()
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
        ack = iec.build_ack(ident, highspeed=switch_to is not None)

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

        try:
            block = self._receive_data(ack, leftover)
        except (MeterTimeout, ProtocolError) as error:
            if switch_to is not None:
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

    def _receive_identification(self) -> tuple[iec.Identification, bytes]:
        """The identification, and any bytes that came after its line in the same read."""
        receiver = iec.IdentificationReceiver()
        ident = self._receive(receiver)
        return ident, receiver.trailing_data

    def _receive_data(self, ack: bytes, leftover: bytes) -> iec.DataBlock:
        return self._receive(iec.DataReceiver(ack=ack), leftover)

    def _receive(self, receiver: _Receiver[T], leftover: bytes = b"") -> T:
        """Feed ``receiver`` until it has its message: the first byte may take the meter's
        reaction time, later ones at most the inter-character gap."""
        if leftover:
            receiver.feed(leftover)
        timeout = FIRST_BYTE_TIMEOUT
        while (message := receiver.result()) is None:
            receiver.feed(self.port.read_some(timeout))
            timeout = GAP_TIMEOUT
        return message


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
