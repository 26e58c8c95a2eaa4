"""A simulated meter behind a pseudo-terminal, served by one thread: the tests' and demo's IR head.

The reader (the daemon, a test, minicom) opens the pty slave, or the symlink to it, like any
serial device. What this runner adds to the sans-I/O :class:`MeterModel` is the line:

* Speed. A Linux pty cannot do 7 data bits or parity, but the baud rate the reader sets on the
  slave is visible through ``tcgetattr`` on the master (checked on this kernel: both fds report
  the reader's settings). When the reader listens at another rate than the meter talks (taken
  when a transmission starts), it gets what a real UART would deliver (:func:`garble`), and the
  meter hears garbage when the reader talks at a rate other than 300 Bd. So a reader that
  forgets to switch, switches too late or stays at 9600 Bd fails here as on hardware. One
  blind spot: a pty does not show whether a rate change came just before or just after a write
  (see ``_read_input``), so switching *before* sending the ACK goes unnoticed here; the
  ``sim://`` handler sees the true order and catches it.
* Time. Bytes leave at the meter's line speed (10 bit times per character, divided by the
  config's ``speedup``; ``inf`` sends each message at once).
* Presence. Nobody listening means bytes are lost, not queued for the next reader (a pty would
  queue them). When the last reader closes, the line settings are reset to those of a fresh
  pty: otherwise reopening with the same 7E1 settings fails with EINVAL (glibc's tcsetattr
  reports failure when nothing it asked for changed, and a pty cannot apply 7E1), which a
  real UART never does. The reset happens a moment after the close, so a reader that reopens
  within microseconds may still meet EINVAL; a reader that waits (any back-off) does not.
* Unplugging. :meth:`PtyMeter.unplug` closes the master (the reader's next read fails:
  pyserial raises SerialException) and removes the symlink; :meth:`PtyMeter.replug` creates a
  new pty behind the same symlink, as udev does when an IR head is plugged in again.

Every model call and fd operation runs on the serving thread; the public methods hand their
work to it and wait, so a test may call them at any time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from iskra_me162.errors import ConfigError, PortError
from iskra_me162.simulator.counters import Registers
from iskra_me162.simulator.line import garble
from iskra_me162.simulator.model import (
    Faults,
    MeterConfig,
    MeterModel,
    ReceivedCommand,
    ServedRead,
    ServedReadout,
    Transmission,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_RATES = (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400,
          57600, 115200, 230400)  # fmt: skip
_SPEEDS: dict[int, int] = {
    getattr(termios, f"B{rate}"): rate for rate in _RATES if hasattr(termios, f"B{rate}")
}
_ISPEED, _OSPEED = 4, 5  # indexes in a tcgetattr list
_NO_READER_POLL = 0.05  # a master without a reader reports POLLHUP at once: look this often
_MIN_SLICE = 0.004  # paced output is written in slices at most this often
_CALL_TIMEOUT = 10.0


@dataclass
class _Outgoing:
    """A transmission being put on the line; ``payload`` is what the reader's UART receives."""

    transmission: Transmission
    payload: bytes | None = None
    per_byte: float = 0.0
    sent: int = 0


@dataclass
class _Call:
    function: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class PtyMeter:
    """A :class:`MeterModel` served on a pty, optionally behind a symlink at ``link``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``clock`` must be a
    monotonic clock in real seconds (the thread sleeps by it). ``on_readout`` is called on the
    serving thread with every data readout the meter sends.
    """

    def __init__(
        self,
        link: str | os.PathLike[str] | None = None,
        config: MeterConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_readout: Callable[[ServedReadout], None] | None = None,
        model: Any = None,
    ) -> None:
        self._link = Path(link) if link is not None else None
        self._clock = clock
        # ``model``: a ready model instead of one made from ``config`` (the SML push meter of
        # .sml_push brings its own, with the same runner-facing methods).
        self._model = model if model is not None else MeterModel(config or MeterConfig(), clock())
        self._on_readout = on_readout
        self._master: int | None = None
        self._path: str | None = None
        self._fresh_attrs: list[Any] | None = None
        self._reader_present = False
        self._seen_rate = 0  # the reader's output rate when the meter last looked
        self._pending: deque[_Outgoing] = deque()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> PtyMeter:
        if self._thread is not None or self._closed:
            raise PortError("a PtyMeter can be started once")
        self._plug()
        self._thread = threading.Thread(target=self._serve, name="pty-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the pty and remove the symlink. Safe to call twice."""
        if self._closed:
            return
        self._stopping = True
        if self._thread is not None:
            self._wake()
            self._thread.join(_CALL_TIMEOUT)
        self._closed = True
        self._unplug()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> PtyMeter:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what a reader opens ------------------------------------------------------------------
    @property
    def path(self) -> str | None:
        """The pty slave (``/dev/pts/N``) while plugged in, else None."""
        return self._path

    @property
    def link(self) -> Path | None:
        return self._link

    @property
    def port(self) -> str:
        """What a reader should open: the symlink if there is one, else the pty slave."""
        if self._link is not None:
            return str(self._link)
        if self._path is None:
            raise PortError("the simulated meter is unplugged")
        return self._path

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self) -> None:
        """Pull the IR head: close the pty (the reader gets EOF/EIO) and remove the symlink."""
        self._call(self._unplug)

    def replug(self) -> None:
        """Plug the head in again: a new pty (another /dev/pts/N) behind the same symlink."""

        def replug() -> None:
            self._unplug()
            self._plug()

        self._call(replug)

    # --- the meter ----------------------------------------------------------------------------
    @property
    def config(self) -> MeterConfig:
        return self._model.config

    @property
    def faults(self) -> Faults:
        return self._model.faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace the fault set (``faults``) and/or change single faults by name."""
        try:
            new = replace(faults or self._model.faults, **changes)
        except TypeError as error:
            raise ConfigError(f"unknown fault: {error}") from None

        def apply() -> Faults:
            self._model.faults = new
            return new

        return self._call(apply)

    def set_power(self, import_w: int | None = None, export_w: int | None = None) -> None:
        self._call(lambda: self._model.set_power(self._clock(), import_w, export_w))

    def set_tariff(self, tariff: int) -> None:
        self._call(lambda: self._model.set_tariff(self._clock(), tariff))

    def registers(self) -> Registers:
        """The registers as the meter would put them in a readout now."""
        return self._call(lambda: self._model.registers(self._clock()))

    @property
    def readouts(self) -> list[ServedReadout]:
        """The last (up to 64) data readouts the meter sent, oldest first."""
        return self._call(lambda: list(self._model.history))

    @property
    def reads(self) -> list[ServedRead]:
        """The last (up to 4096) R1 answers in programming mode, oldest first."""
        return self._call(lambda: list(self._model.reads))

    @property
    def commands(self) -> list[ReceivedCommand]:
        """The last (up to 10000) messages the reader wrote, as written, oldest first."""
        return self._call(lambda: list(self._model.commands))

    @property
    def violations(self) -> int:
        """Messages since start that a read-only reader must not send (W, E, P, garbage ...)."""
        return self._call(lambda: self._model.violations)

    @property
    def started(self) -> float:
        """When the meter started (on ``clock``): load steps and ``silent_from`` count from here."""
        return self._model.started

    def state(self) -> Any:
        """The meter's session state now (:class:`~.model.SessionState`)."""
        return self._call(lambda: self._model.state(self._clock()))

    # --- plumbing -----------------------------------------------------------------------------
    def _call(self, function: Callable[[], _T]) -> _T:
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return function()
        call = _Call(function)
        self._calls.put(call)
        self._wake()
        if not call.done.wait(_CALL_TIMEOUT):
            raise PortError("the simulated meter's thread does not answer")
        if call.error is not None:
            raise call.error
        return call.result

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call.result = call.function()
            except Exception as error:  # noqa: BLE001 - handed to the caller's thread
                call.error = error
            call.done.set()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _plug(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo or CR/LF translation before a reader configures it
            path = os.ttyname(slave)
        finally:
            os.close(slave)  # only readers hold the slave: their close is then seen as POLLHUP
        os.set_blocking(master, False)
        self._fresh_attrs = termios.tcgetattr(master)
        if self._link is not None:
            try:
                self._make_link(path)
            except PortError:
                os.close(master)
                raise
        self._master, self._path = master, path
        self._reader_present = False
        self._poller.register(master, select.POLLIN)
        log.info("simulated meter on %s%s", path, f" (link {self._link})" if self._link else "")

    def _make_link(self, target: str) -> None:
        link = self._link
        assert link is not None
        if link.exists() and not link.is_symlink():
            raise PortError(f"{link} exists and is not a symlink; not replacing it")
        temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(target)
            temporary.replace(link)  # atomic: a reader never sees the link missing or half-made
        except OSError as error:
            raise PortError(f"cannot create symlink {link}: {error.strerror}") from None

    def _unplug(self) -> None:
        master, path = self._master, self._path
        if master is None:
            return
        self._poller.unregister(master)
        os.close(master)
        self._master = self._path = None
        self._pending.clear()
        self._reader_present = False
        link = self._link
        if link is not None and link.is_symlink() and str(link.readlink()) == path:
            link.unlink()
        log.info("simulated meter unplugged from %s", path)

    def _serve(self) -> None:
        try:
            while not self._stopping:
                self._run_calls()
                if self._stopping:
                    break
                if self._master is None:
                    self._sleep(None)
                    continue
                self._seen_rate = self._reader_speed(_OSPEED)  # before the reader can react
                timeout = self._send_due(self._clock())
                wait_ms = None if timeout is None else max(1, int(timeout * 1000 + 0.999))
                events = dict(self._poller.poll(wait_ms))
                if self._wake_r in events:
                    self._drain_wake()
                master = self._master
                state = events.get(master, 0) if master is not None else 0
                if state & select.POLLIN:
                    self._read_input()
                elif state & (select.POLLHUP | select.POLLERR):
                    self._no_reader()
                    self._sleep(_NO_READER_POLL)
        except Exception:
            log.exception("simulated meter thread failed")
            raise
        finally:
            self._run_calls()  # never leave a caller waiting

    def _sleep(self, seconds: float | None) -> None:
        """Wait for a wake-up (a call, stop) or ``seconds``."""
        ready, _, _ = select.select([self._wake_r], [], [], seconds)
        if ready:
            self._drain_wake()

    def _reader_speed(self, index: int) -> int:
        """The reader's input (``_ISPEED``) or output (``_OSPEED``) rate; 0 if unknown."""
        assert self._master is not None
        try:
            return _SPEEDS.get(termios.tcgetattr(self._master)[index], 0)
        except termios.error:
            return 0

    def _read_input(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno == errno.EIO:
                self._no_reader()
                return
            raise
        if not data:
            return
        self._reader_present = True
        if self._model.faults.echo:
            self._write(data)  # the head's own echo comes back at once, at the reader's rate
        # A pty does not tell whether the reader changed its rate before or after writing
        # (write, flush and a baud change take microseconds on a pty; on a UART, flush waits
        # until the bytes are out). So the bytes count as sent at the listening rate if that
        # was the reader's rate when the meter last looked or is its rate now.
        rate_before, rate_now = self._seen_rate, self._reader_speed(_OSPEED)
        self._seen_rate = rate_now
        now = self._clock()
        listen = self._model.listen_baud_at(now)
        if listen in (rate_before, rate_now):
            heard = data
        else:
            heard = garble(data, rate_now, listen)
            log.debug("reader talks at %d Bd, meter hears %r", rate_now, heard)
        for transmission in self._model.receive(heard, now, sent=data):
            self._pending.append(_Outgoing(transmission))
            if transmission.readout is not None:
                self._report(transmission.readout)

    def _report(self, readout: ServedReadout) -> None:
        if self._on_readout is None:
            return
        try:
            self._on_readout(readout)
        except Exception:
            log.exception("on_readout callback failed")

    def _send_due(self, now: float) -> float | None:
        """Write what is due; return seconds until the next byte is due (None: nothing pending)."""
        while self._pending:
            outgoing = self._pending[0]
            transmission = outgoing.transmission
            if now < transmission.start:
                return transmission.start - now
            if outgoing.payload is None:
                if not self._reader_present:
                    self._pending.popleft()  # nobody listening: the light goes nowhere
                    continue
                heard_at = self._reader_speed(_ISPEED)
                data = transmission.data
                outgoing.payload = (
                    data
                    if heard_at == transmission.baud
                    else garble(data, transmission.baud, heard_at)
                )
                if outgoing.payload:
                    outgoing.per_byte = transmission.duration / len(outgoing.payload)
            payload = outgoing.payload
            if outgoing.per_byte > 0:
                due = min(len(payload), int((now - transmission.start) / outgoing.per_byte))
            else:
                due = len(payload)
            if due > outgoing.sent:
                self._write(payload[outgoing.sent : due])
                outgoing.sent = due
            if outgoing.sent >= len(payload):
                self._pending.popleft()
                continue
            next_byte = transmission.start + (outgoing.sent + 1) * outgoing.per_byte
            return max(_MIN_SLICE, next_byte - now)
        return None

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            written = 0
        if written < len(data):
            # A reader that does not read overruns its buffer: the rest is lost, as on a UART.
            log.debug("reader's buffer full: %d of %d bytes lost", len(data) - written, len(data))

    def _no_reader(self) -> None:
        """The last reader closed the slave: forget queued output, reset the line settings."""
        self._reader_present = False
        self._pending.clear()
        master = self._master
        if master is None or self._fresh_attrs is None:
            return
        if termios.tcgetattr(master) == self._fresh_attrs:
            return
        # Reset only while nobody has the slave open (POLLHUP still set), so that a reader
        # that has just opened it keeps its settings.
        check = select.poll()
        check.register(master, select.POLLIN)
        if any(event & select.POLLHUP for _, event in check.poll(0)):
            termios.tcsetattr(master, termios.TCSANOW, self._fresh_attrs)
            log.debug("reader left; line settings reset")
