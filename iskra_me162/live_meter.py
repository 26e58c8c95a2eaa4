"""A mode C meter read live (``live_power = True``): its counters polled in programming mode.

The ISKRA ME162 sends no power register, and a readout every ``update_interval`` gives power only
in steps of 3600 / interval W. In programming mode (option 1 of the ACK, no password) the meter
answers single read commands in a quarter of a second, so the counters 1.8.0 and 2.8.0 can be
read every ``poll_interval`` seconds and each 1 Wh step timed; the derive stage turns those times
into power (:mod:`iskra_me162.derive.steps`).

The session, as this meter runs it:

1. The first :meth:`LiveIecMeter.read` is a whole readout (as :class:`~iskra_me162.meters.
   IecMeter` does): it names the meter and the registers there are.
2. Then a programming-mode session: request, identification, ``ACK 0 Z 1``, the meter's
   ``P0``; from then on each :meth:`read` polls 1.8.0 and 2.8.0 (when the meter has it) with
   ``R1`` and returns a readout whose ``polled`` says which registers are fresh and when their
   answers came. The tariff registers are polled one per cycle, all of them once per
   ``full_every`` seconds (the update interval), so Domoticz gets fresh tariffs.
3. Any fault in a session (no answer, a BCC error, a malformed answer, the port gone) ends it:
   ``B0`` is sent (best effort), the port closed, and the daemon reopens it with its back-off;
   the next :meth:`read` starts a new session. A meter that drops programming mode after
   inactivity meets the same path. A meter that may not have heard that ``B0`` (it was silent,
   or the head was unplugged) still listens at the session's rate only, until its own
   inactivity time-out: each new session starts with ``B0`` at that rate, until the meter
   answers a request again.
4. A session ends (SIGTERM, reload, a fault) only after the answer the meter may still be
   sending: a ``B0`` that arrives while the meter talks is not heard.
5. A meter that refuses programming mode (NAK, a readout instead of ``P0``, no ``P0`` on the
   first try, or ``(ERROR)`` for 1.8.0) is logged once and read from then on as in readout
   mode: :attr:`pushes` turns False, and the daemon asks for a readout once per update
   interval, waiting in between as it does for any mode C meter.

Only the request, ACK, ``R1``, ``B0`` and NAK are ever sent (``iec62056_21.is_allowed_command``
checks every message before it leaves): no write, execute or password command.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime

from iskra_me162.errors import MeterTimeout, ProtocolError
from iskra_me162.meters import INITIAL_BAUD, IecMeter
from iskra_me162.obis import Reading
from iskra_me162.port import Port
from iskra_me162.protocols import iec62056_21 as iec
from iskra_me162.readout import Readout

log = logging.getLogger(__name__)

COUNTERS = ("1.8.0", "2.8.0")
TARIFFS = tuple(f"{direction}.8.{n}" for direction in (1, 2) for n in range(1, 10))
# One register answer: the meter's reaction time (200 ms at most for mode C) plus ~20 characters.
ANSWER_BYTES = 64
# What an answer usually is (STX, "(0012345.678*kWh)", ETX, BCC): its first read waits for them.
TYPICAL_ANSWER_BYTES = 20
FIRST_READ_MARGIN = 0.005  # seconds: a pty hands bytes over every 4 ms
BREAK_PAUSE = 0.3  # after a B0, before the next request: the meter's reaction time and more
ANSWER_MARGIN = 0.05  # seconds beyond the reaction time and the answer's bytes
LONGEST_ANSWER_WAIT = 1.0  # before a B0 at the end: at most this for an answer on its way
# The cycle's last answer is read at the next poll instead when that is at most this much later
# (0.02 s at 9600 Bd): one wake-up a cycle instead of two, its value that much later.
LATE_READ_AT_MOST = 0.1


class LiveIecMeter(IecMeter):
    """Reads an IEC 62056-21 meter's counters live in programming mode; see the module doc."""

    @property
    def pushes(self) -> bool:
        """A readout per poll: the daemon handles it as a push meter; refused, as a meter it
        asks once per update interval (the daemon's own wait is cheaper than a poll loop)."""
        return not self.refused

    def __init__(
        self,
        port: Port,
        use_highspeed: bool,
        baud_switch_delay: float,
        *,
        poll_interval: float,
        full_every: float,
    ) -> None:
        super().__init__(port, use_highspeed, baud_switch_delay)
        if not 0 < poll_interval <= full_every:
            raise ValueError("need 0 < poll_interval <= full_every")
        self.poll_interval = poll_interval
        self.full_every = full_every
        self._base: Readout | None = None  # the latest readout: identity and every register
        self._in_session = False
        self._ever_in_session = False
        self.refused = False  # the meter has no programming mode: readout mode from now on
        self._next_poll = 0.0  # monotonic time of the next poll cycle
        self._next_full = 0.0  # when the tariff registers are polled next
        self._tariffs_left: list[str] = []
        self._session_baud = INITIAL_BAUD  # the rate the meter talks and listens at in session
        self._reaction = 0.0  # the meter's reaction time, from its identification
        self._answer_due: float | None = None  # an answer may be on its way until then
        # A session that ended in silence may still be open on the meter's side, which then
        # hears only B0 at the session's baud rate until its own inactivity time-out.
        self._break_at: int | None = None

    # --- the daemon's side ------------------------------------------------------------------

    def read(self) -> Readout:
        """The next readout: a whole one first (and in readout mode), then one per poll."""
        if self._base is None:
            return self._whole_readout()
        if self.refused:
            return self._whole_readout()  # the daemon paces these (pushes is False)
        if not self._in_session:
            self._enter()
        self._wait_until(self._next_poll)
        self._next_poll = time.monotonic() + self.poll_interval
        try:
            return self._poll_cycle()
        except (MeterTimeout, ProtocolError) as error:
            self._end_session(after_fault=True)
            raise type(error)(f"programming-mode session ended: {error}") from None

    def close(self) -> None:
        """End the session with ``B0`` (the meter listens for a request again), close the port."""
        self._end_session()

    # --- sessions ---------------------------------------------------------------------------

    def _whole_readout(self) -> Readout:
        readout = super().read()
        self._base = readout
        return readout

    def _enter(self) -> None:
        """A programming-mode session: ``ACK 0 Z 1``, then the meter's ``P0``."""
        if self._break_at is not None:
            self._late_break()
        ident, _ack, leftover, _switched = self._start_session(iec.PROGRAMMING_MODE)
        self._break_at = None  # it answered a request: it listened at 300 Bd, out of session
        self._reaction = ident.reaction_time
        self._session_baud = self.port.baudrate
        self._in_session = True  # from the ACK on, the meter may be in programming mode
        self._expect_answer(time.monotonic())
        receiver = iec.OperandReceiver()
        try:
            self._receive(receiver, "programming mode answer", self.port.baudrate, 512, leftover)
        except iec.ProgrammingModeRefused as error:
            self._in_session = False
            self._refuse(str(error))
            raise
        except MeterTimeout:
            if self._ever_in_session:
                self._end_session(after_fault=True)
            else:
                self._end_session()  # best effort, in case only its P0 went astray
                self._refuse("it did not answer the programming mode request (no P0)")
            raise
        except ProtocolError:
            self._end_session(after_fault=True)
            raise
        self._answer_due = None
        self._ever_in_session = True
        self._tariffs_left = []
        self._next_full = time.monotonic()  # the tariffs once right away
        log.info(
            "programming mode entered: reading %s every %g s",
            ", ".join(self._counters()),
            self.poll_interval,
        )

    def _end_session(self, after_fault: bool = False) -> None:
        """``B0`` (after any answer still on its way), then close the port. ``after_fault``:
        the meter may be silent now and miss the B0, so the next session starts with another."""
        if self._in_session:
            sent = False
            if self.port.is_open:
                try:
                    self._await_answer()
                    self._send(iec.build_break())
                    sent = True
                except Exception as error:  # noqa: BLE001 - best effort: the port may be gone
                    log.debug("B0 not sent: %s", error)
            if after_fault or not sent:
                self._break_at = self._session_baud
        self._in_session = False
        self._answer_due = None
        self.port.close()

    def _late_break(self) -> None:
        """B0 once more at the old session's speed, in case the meter did not hear the first;
        ``_break_at`` stays set until the meter answers a request again."""
        assert self._break_at is not None
        self.port.open()
        self.port.set_baudrate(self._break_at)
        self._send(iec.build_break())
        time.sleep(BREAK_PAUSE)

    def _expect_answer(self, asked_at: float) -> None:
        """An answer to what was sent at ``asked_at`` may come until ``_answer_due``."""
        on_the_wire = ANSWER_BYTES * 10 / self._session_baud
        self._answer_due = asked_at + self._reaction + on_the_wire + ANSWER_MARGIN

    def _await_answer(self) -> None:
        """Let an answer still on its way pass (the meter does not listen while it talks)."""
        due, self._answer_due = self._answer_due, None
        if due is None:
            return
        wait = min(due - time.monotonic(), LONGEST_ANSWER_WAIT)
        if wait > 0:
            time.sleep(wait)  # no tick: this runs on the way out (SIGTERM), it must end here
        self.port.discard_input()

    def _refuse(self, why: str) -> None:
        self.refused = True
        self._in_session = False
        self.port.close()
        log.warning(
            "live power is off: the meter refuses programming mode (%s); it is read in readout "
            "mode every %g s instead (set live_power = False to say so in the configuration)",
            why,
            self.full_every,
        )

    # --- polling ----------------------------------------------------------------------------

    def _poll_cycle(self) -> Readout:
        assert self._base is not None
        registers = list(self._counters())
        now = time.monotonic()
        if now >= self._next_full and not self._tariffs_left:
            self._tariffs_left = self._tariffs()
            self._next_full = now + self.full_every
        if self._tariffs_left:
            registers.append(self._tariffs_left.pop(0))
        fresh: dict[str, Reading] = {}
        polled: list[tuple[str, float]] = []
        for number, register in enumerate(registers, 1):
            reading, asked_at = self._read_register(register, last=number == len(registers))
            fresh[reading.code.cde] = reading
            polled.append((reading.code.cde, asked_at))
        readout = dataclasses.replace(
            self._base,
            readings=tuple(_updated(old, fresh) for old in self._base.readings),
            wall_time=datetime.now(UTC),
            monotonic=polled[0][1],
            polled=tuple(polled),
        )
        self._base = readout
        return readout

    def _read_register(self, register: str, last: bool = False) -> tuple[Reading, float]:
        """The register's reading and when the meter took it: as our command arrived (the
        write returns once it has left), not as the answer came back a reaction time later.
        ``last`` of the cycle: read at the next poll when that is near (LATE_READ_AT_MOST)."""
        command = iec.build_read(register)
        writing_at = time.monotonic()
        self._send(command)
        asked_at = time.monotonic()
        self._expect_answer(asked_at)
        baud = self.port.baudrate
        # The first read waits for the whole answer: the reaction time after the command has
        # left (a pty and some USB adapters return from the write before it has), then its
        # characters on the wire.
        left_at = max(asked_at, writing_at + len(command) * 10 / baud)
        whole_at = left_at + self._reaction + TYPICAL_ANSWER_BYTES * 10 / baud + FIRST_READ_MARGIN
        if last and whole_at < self._next_poll <= whole_at + LATE_READ_AT_MOST:
            whole_at = self._next_poll
        receiver = iec.RegisterReceiver(register)
        what = f"answer for {register}"
        answer = self._receive(receiver, what, baud, ANSWER_BYTES, first_read_at=whole_at)
        self._answer_due = None
        if answer.reading is None:
            if register == "1.8.0" and not self._ever_polled(register):
                self._end_session()
                self._refuse(f"it answers (ERROR) for {register}")
            raise ProtocolError(f"the meter does not know register {register} ({answer.raw})")
        return answer.reading, asked_at

    def _ever_polled(self, register: str) -> bool:
        return self._base is not None and any(cde == register for cde, _ in self._base.polled)

    def _counters(self) -> tuple[str, ...]:
        assert self._base is not None
        return tuple(cde for cde in COUNTERS if self._base.get(cde) is not None) or ("1.8.0",)

    def _tariffs(self) -> list[str]:
        assert self._base is not None
        return [cde for cde in TARIFFS if self._base.get(cde) is not None]

    def _send(self, message: bytes) -> None:
        if not iec.is_allowed_command(message):  # a bug, never a meter's doing: refuse to send
            raise AssertionError(f"refusing to send {message!r}: not a read-only command")
        self.port.write(message)

    def _wait_until(self, moment: float) -> None:
        """Sleep until ``moment``, ticking (SIGTERM, the watchdog) as a read does."""
        self.port.tick()
        self.port.sleep_until(moment)


def _updated(old: Reading, fresh: dict[str, Reading]) -> Reading:
    """``old`` with the value of a freshly polled register of the same C.D.E, else as it was."""
    new = fresh.get(old.code.cde)
    if new is None or not old.code.means(old.code.cde):
        return old
    return dataclasses.replace(old, value=new.value, unit=new.unit, raw=new.raw, extra=new.extra)
