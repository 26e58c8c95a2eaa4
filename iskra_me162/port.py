"""The serial line: pyserial glue between an IR head and the sans-I/O protocol cores.

One class, :class:`Port`, used for every kind of port — a device path, a ``/dev/serial/by-id``
link, a pyserial URL (``rfc2217://``, ``socket://``) or the built-in simulator (``sim://``) — so the
code the tests drive over a pty is the code that drives a real UART.

Two habits keep it working on every kind of line:

* Settings are applied once, before the port is opened, and later only when they *change*. A
  Linux pty cannot do 7 data bits or parity, and glibc's ``tcsetattr`` fails with EINVAL when the
  only change requested is one the pty cannot apply; pyserial re-applies everything on every
  ``ser.timeout = ...`` or ``ser.baudrate = <same rate>``. A real UART would accept both, so the bug
  would only show in tests — or, worse, only on hardware. We never do either.
* The read timeout is a fixed short slice (:data:`READ_SLICE`); longer waits are loops of slices
  that call ``tick()`` between them, so a SIGTERM or a watchdog ping never waits for a slow meter.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import termios
import time
import urllib.parse
from collections.abc import Callable
from types import ModuleType

from iskra_me162.errors import ConfigError, MeterTimeout, PortError

log = logging.getLogger(__name__)

READ_SLICE = 0.25  # seconds one blocking read may take before tick() runs again
# A sleep this much longer than READ_SLICE is still slept in one piece: a wake-up only to tick
# costs more CPU than the rest of the wait is worth (live power waits 0.26 s between answers).
SLEEP_SLACK = 0.05
URL_HANDLER_PACKAGE = "iskra_me162.urlhandler"  # provides sim:// (the built-in simulator)
# The pyserial URL schemes that make sense for an IR head (sim:// is the built-in simulator).
URL_SCHEMES = ("rfc2217", "socket", "sim")

# Even parity in bit 7, for sending 7E1 characters through an adapter set to 8N1.
_EVEN_PARITY = bytes(b | (0x80 if bin(b).count("1") % 2 else 0) for b in range(128)) * 2
_SEVEN_BITS = bytes(b & 0x7F for b in range(256))


def escape(data: bytes) -> str:
    """Bytes as readable text for the wire log: printable ASCII as is, the rest as \\xNN."""
    names = {0x02: "<STX>", 0x03: "<ETX>", 0x06: "<ACK>", 0x15: "<NAK>", 0x01: "<SOH>"}
    out = []
    for byte in data:
        if byte in names:
            out.append(names[byte])
        elif byte == 0x0D:
            out.append("\\r")
        elif byte == 0x0A:
            out.append("\\n")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


class _UnsupportedFormat(Exception):
    """The device refused the data bits or parity (EINVAL): a pseudo-terminal."""


def _is_url(port: str) -> bool:
    return "://" in port


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a port, or None; nothing is opened or connected.

    For the config check: a wrong URL is a mistake that no reopening fixes, so it must not wait
    for the first open. ``sim://`` options are parsed by the handler that opens them.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        return f"URL scheme {scheme!r} is not supported; use a device path, " + ", ".join(
            f"{known}://" for known in URL_SCHEMES
        )
    if scheme == "sim":
        from iskra_me162.urlhandler.protocol_sim import parse_url

        try:
            parse_url(url)
        except ConfigError as error:
            return f"is not a valid simulator URL: {error.message}"
        return None
    try:  # socket://, rfc2217://: pyserial takes the rest (options) on open
        parts = urllib.parse.urlsplit(url)
        has_address = bool(parts.hostname) and parts.port is not None
    except ValueError as error:  # a port number out of range or not a number
        return f"is not a valid {scheme}:// URL: {error}"
    return None if has_address else f"needs a host and a TCP port: {scheme}://host:port"


class Port:
    """An IR head on a serial line, opened on demand and reopened after it vanished.

    ``serial_format`` is e.g. ``"7E1"``. When it is ``8N1`` but the meter speaks 7E1 (adapters
    without 7-bit support), ``seven_bit_line=True`` masks received bytes to 7 bits and adds even
    parity to sent bytes, which is what the meter's UART expects.
    """

    def __init__(
        self,
        url: str,
        baudrate: int = 300,
        serial_format: str = "7E1",
        seven_bit_line: bool = True,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.initial_baudrate = baudrate
        self.bytesize = int(serial_format[0])
        self.parity = serial_format[1].upper()
        self.stopbits = int(serial_format[2])
        self.emulate_seven_bits = seven_bit_line and self.bytesize == 8
        self.tick = tick or (lambda: None)
        self._serial = None  # serial.SerialBase when open
        self._mask_input = self.emulate_seven_bits
        self._pty_fallback_logged = False

    # --- opening and closing -----------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port at the initial baud rate; raise PortError if it is not there."""
        if self._serial is not None:
            return
        import serial

        if URL_HANDLER_PACKAGE not in serial.protocol_handler_packages:
            serial.protocol_handler_packages.append(URL_HANDLER_PACKAGE)
        try:
            ser = self._open(serial, self.bytesize, self.parity)
        except _UnsupportedFormat:
            # Only a pseudo-terminal refuses 7 data bits or parity outright (EINVAL): real
            # UARTs take them, and USB adapters that cannot do them silently use 8N1. A pty
            # carries bytes, not bits, so 8N1 with 7-bit masking loses nothing there.
            if not self._pty_fallback_logged:
                log.info(
                    "%s cannot do %s (a pseudo-terminal?): using 8N1, bytes masked to 7 bits",
                    self.url,
                    self.format_name,
                )
                self._pty_fallback_logged = True
            try:
                ser = self._open(serial, 8, "N")
            except _UnsupportedFormat as error:
                raise PortError(f"cannot open {self.url}: {error}") from None
            self._mask_input = True
        self._serial = ser
        log.info("opened %s at %d baud %s", self.url, ser.baudrate, self.format_name)

    def _open(self, serial: ModuleType, bytesize: int, parity: str):  # noqa: ANN202 - SerialBase
        try:
            ser = serial.serial_for_url(self.url, do_not_open=True)
            # Everything is set before open(): see the module docstring for why.
            ser.baudrate = self.initial_baudrate
            ser.bytesize = bytesize
            ser.parity = parity
            ser.stopbits = self.stopbits
            ser.timeout = READ_SLICE
            ser.write_timeout = 10.0
            if not _is_url(self.url):
                ser.exclusive = True  # another reader on the same head garbles both
            ser.open()
        except termios.error as error:  # not an OSError: pyserial lets it through
            if error.args and error.args[0] == errno.EINVAL and (bytesize != 8 or parity != "N"):
                raise _UnsupportedFormat(str(error)) from None
            raise PortError(f"cannot open {self.url}: {_reason(error)}") from None
        except (OSError, ValueError, serial.SerialException) as error:
            raise PortError(f"cannot open {self.url}: {_reason(error)}") from None
        return ser

    @property
    def format_name(self) -> str:
        return f"{self.bytesize}{self.parity}{self.stopbits}"

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception as error:  # noqa: BLE001 - closing a vanished device may fail any way
                log.debug("closing %s: %s", self.url, error)
            log.debug("closed %s", self.url)

    def cancel_read(self) -> None:
        """Make a blocking read return now (called from a signal handler)."""
        ser = self._serial
        if ser is not None and hasattr(ser, "cancel_read"):
            # Best effort: the read slice timeout bounds the wait anyway.
            with contextlib.suppress(Exception):
                ser.cancel_read()

    def _require(self):  # noqa: ANN202 - returns serial.SerialBase, imported lazily
        if self._serial is None:
            raise PortError(f"{self.url} is not open")
        return self._serial

    # --- line settings -----------------------------------------------------------------------
    @property
    def baudrate(self) -> int:
        return int(self._require().baudrate)

    def set_baudrate(self, baudrate: int) -> None:
        """Switch speed, but only if it differs (re-applying fails on a pty, see above)."""
        ser = self._require()
        if ser.baudrate == baudrate:
            return
        try:
            ser.baudrate = baudrate
        except (OSError, ValueError, termios.error) as error:
            self.close()
            raise PortError(f"cannot set {self.url} to {baudrate} baud: {_reason(error)}") from None
        log.debug("%s now at %d baud", self.url, baudrate)

    # --- data --------------------------------------------------------------------------------
    def discard_input(self) -> None:
        """Throw away what the line holds (left-overs of an earlier, failed session)."""
        ser = self._require()
        try:
            ser.reset_input_buffer()
        except (OSError, ValueError, termios.error) as error:
            self._fail("flushing", error)

    def write(self, data: bytes) -> None:
        """Send bytes and wait until they have left the output buffer (tcdrain)."""
        ser = self._require()
        if log.isEnabledFor(logging.DEBUG):  # escape() costs more than the write itself
            log.debug("TX %s", escape(data))
        wire = data.translate(_EVEN_PARITY) if self.emulate_seven_bits else data
        try:
            ser.write(wire)
            ser.flush()
        except Exception as error:  # noqa: BLE001 - pyserial raises several unrelated types
            self._fail("writing to", error)

    def read_some(self, first_byte_timeout: float) -> bytes:
        """Return the bytes that arrive, waiting at most ``first_byte_timeout`` for the first.

        Returns as soon as something arrived (and nothing more followed within one slice), so
        callers feed the protocol core incrementally. Raises MeterTimeout when nothing came.
        """
        ser = self._require()
        deadline = time.monotonic() + first_byte_timeout
        while True:
            self.tick()
            try:
                waiting = ser.in_waiting
                chunk = ser.read(waiting if waiting > 0 else 1)
            except Exception as error:  # noqa: BLE001 - SerialException, OSError, TypeError ...
                self._fail("reading from", error)
            if chunk:
                if self._mask_input:
                    chunk = chunk.translate(_SEVEN_BITS)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("RX %s", escape(chunk))
                return chunk
            if time.monotonic() >= deadline:
                raise MeterTimeout(
                    f"no answer from the meter within {first_byte_timeout:.1f} s on {self.url}"
                )

    def sleep_until(self, moment: float) -> None:
        """Sleep until ``moment`` (``time.monotonic()``), calling ``tick()`` after every
        :data:`READ_SLICE` (+ :data:`SLEEP_SLACK`) as a read does: a wait for the line never
        holds up a SIGTERM."""
        while (remaining := moment - time.monotonic()) > 0:
            time.sleep(remaining if remaining <= READ_SLICE + SLEEP_SLACK else READ_SLICE)
            self.tick()

    def _fail(self, action: str, error: BaseException) -> None:
        """The device failed or vanished: close it so the next cycle reopens it."""
        self.close()
        raise PortError(f"error {action} {self.url}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # pyserial wraps errno texts as "[Errno 2] could not open port /dev/x: [Errno 2] No such ...";
    # keep the most specific part so the log line stays short.
    if "] " in text:
        text = text.rsplit("] ", 1)[-1]
    return text
