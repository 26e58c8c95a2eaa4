"""Readout cycle time against the wire limit (issue #6, item 1).

The daemon's own code takes the readouts: :class:`~iskra_me162.meters.IecMeter` over a
:class:`~iskra_me162.port.Port` on a real pty (the pyserial code path of a UART), exactly as
``daemon.build_meter`` builds them. At the other end a :class:`PtyMeter` with ``speedup=1.0`` is
the line: it delivers each character 10 bit times after the previous one at the current baud rate
and keeps the meter's reaction time (200 ms for ``ISK``). The only addition is a Port subclass
that notes when each chunk leaves or arrives, to split the cycle into phases.

The wire limit of one exchange is what no reader can beat::

    (request + identification + ACK characters) x 10 / 300
    + data block characters x 10 / data baud rate
    + 3 reaction times (meter before its identification, reader before the ACK, meter before
      the data block; IEC 62056-21 5.4: 200 ms <= t_r, 20 ms with a lower-case third letter)

The baud switch adds nothing to it: the reader switches ``baud_switch_delay`` (0.1 s) after its
ACK has left, while the meter is still in its own reaction time (0.2 s) before the data block. If
the delay were longer than the meter's reaction time, the difference would be added.

The simulator is measured on its own as well (:func:`simulator_alone`): a bare reader on the pty
(select + os.read, no pyserial, no protocol code) against the same ideal, so that a gap can be
told apart into "the line was slow" and "the daemon was slow".
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, Section, median
from iskra_me162.meters import IecMeter
from iskra_me162.port import Port
from iskra_me162.protocols import iec62056_21 as iec
from iskra_me162.simulator.line import FRAME_BITS
from iskra_me162.simulator.model import MeterConfig
from iskra_me162.simulator.pty_meter import PtyMeter

BAUD_SWITCH_DELAY = 0.1  # the config default (config.py KEYS["baud_switch_delay"])
# While nobody has its pty open, PtyMeter looks for a reader only every 50 ms, so a request
# written right after the open may wait that long. A reader that stays open (the daemon) meets
# this once; the benchmark lets it pass before the first measured request.
NO_READER_POLL = 0.1
SWEEP = ("1", "2", "3", "4", "5", "6")  # 600 .. 19200 Bd after a switch


@dataclass
class Event:
    at: float
    direction: str  # "tx" or "rx"
    size: int
    baud: int


class TimedPort(Port):
    """The daemon's Port, noting when each chunk leaves or arrives (nothing else changes)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.events: list[Event] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.events.append(Event(time.monotonic(), "tx", len(data), self.baudrate))

    def read_some(self, first_byte_timeout: float) -> bytes:
        chunk = super().read_some(first_byte_timeout)
        self.events.append(Event(time.monotonic(), "rx", len(chunk), self.baudrate))
        return chunk


@dataclass
class Cycle:
    """One measured readout and the ideal for the same exchange."""

    measured: float
    limit: float
    request_chars: int
    ident_chars: int
    ack_chars: int
    data_chars: int
    data_baud: int
    reaction: float
    phases: dict[str, float]  # measured minus ideal, per phase (seconds)

    @property
    def ratio(self) -> float:
        return self.measured / self.limit


def wire_limit(
    request: int, ident: int, ack: int, data: int, data_baud: int, reaction: float
) -> float:
    switch = max(0.0, BAUD_SWITCH_DELAY - reaction) if data_baud != 300 else 0.0
    low = (request + ident + ack) * FRAME_BITS / 300
    return low + data * FRAME_BITS / data_baud + 3 * reaction + switch


def take_cycle(meter: IecMeter, port: TimedPort, reaction: float) -> Cycle:
    port.events.clear()
    started = time.monotonic()
    meter.read()
    measured = time.monotonic() - started
    events = port.events
    tx = [event for event in events if event.direction == "tx"]
    request, ack = tx[0], tx[1]
    ident_rx = [e for e in events if e.direction == "rx" and request.at <= e.at < ack.at]
    data_rx = [e for e in events if e.direction == "rx" and e.at > ack.at]
    ident_chars = sum(event.size for event in ident_rx)
    data_chars = sum(event.size for event in data_rx)
    data_baud = data_rx[-1].baud
    low = FRAME_BITS / 300
    ideal_ident = (request.size + ident_chars) * low + reaction
    ideal_data = ack.size * low + reaction + data_chars * FRAME_BITS / data_baud
    phases = {
        "before request": request.at - started,
        "request -> identification": (ident_rx[-1].at - request.at) - ideal_ident,
        "identification -> ACK": (ack.at - ident_rx[-1].at) - reaction,
        "ACK -> last data byte": (data_rx[-1].at - ack.at) - ideal_data,
        "after last byte": started + measured - data_rx[-1].at,
    }
    return Cycle(
        measured=measured,
        limit=wire_limit(request.size, ident_chars, ack.size, data_chars, data_baud, reaction),
        request_chars=request.size,
        ident_chars=ident_chars,
        ack_chars=ack.size,
        data_chars=data_chars,
        data_baud=data_baud,
        reaction=reaction,
        phases=phases,
    )


def run_cycles(baud_char: str, highspeed: bool, repeats: int) -> list[Cycle]:
    config = MeterConfig(baud_char=baud_char, speedup=1.0)
    with PtyMeter(config=config) as simulated:
        port = TimedPort(simulated.port, baudrate=300, serial_format="7E1", seven_bit_line=True)
        meter = IecMeter(port, use_highspeed=highspeed, baud_switch_delay=BAUD_SWITCH_DELAY)
        try:
            port.open()
            time.sleep(NO_READER_POLL)
            return [take_cycle(meter, port, config.reaction) for _ in range(repeats)]
        finally:
            meter.close()


# --- the simulator alone -------------------------------------------------------------------------


def _set_speed(fd: int, baud: int) -> None:
    attrs = termios.tcgetattr(fd)
    speed = getattr(termios, f"B{baud}")
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _read_until(fd: int, complete: Callable[[bytes], bool], deadline: float) -> tuple[bytes, float]:
    """Read until ``complete(data)``; return the bytes and the instant the last chunk arrived."""
    data = bytearray()
    last = time.monotonic()
    while not complete(bytes(data)) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data += os.read(fd, 4096)
        last = time.monotonic()
    return bytes(data), last


def _line_complete(data: bytes) -> bool:
    return data.endswith(b"\n")


def _block_complete(data: bytes) -> bool:
    etx = data.find(b"\x03")
    return 0 <= etx < len(data) - 1  # ETX and the BCC after it


def simulator_alone(baud_char: str, repeats: int) -> dict[str, float]:
    """A bare reader (select + os.read) against the simulator: pacing error per phase."""
    config = MeterConfig(baud_char=baud_char, speedup=1.0)
    data_baud = iec.BAUD_RATES[baud_char]
    low = FRAME_BITS / 300
    errors_ident: list[float] = []
    errors_data: list[float] = []
    with PtyMeter(config=config) as simulated:
        fd = os.open(simulated.port, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            time.sleep(NO_READER_POLL)
            for _ in range(repeats):
                _set_speed(fd, 300)
                sent = time.monotonic()
                os.write(fd, iec.REQUEST)
                ident, ident_at = _read_until(fd, _line_complete, sent + 5)
                ideal = (len(iec.REQUEST) + len(ident)) * low + config.reaction
                errors_ident.append(ident_at - sent - ideal)
                # The reader's own reaction time, then the ACK and the switch at once.
                time.sleep(max(0.0, ident_at + config.reaction - time.monotonic()))
                ack = bytes((iec.ACK, 0x30, ord(baud_char), 0x30, 0x0D, 0x0A))
                ack_at = time.monotonic()
                os.write(fd, ack)
                time.sleep(0.01)  # switch within the meter's reaction time
                _set_speed(fd, data_baud)
                block, block_at = _read_until(fd, _block_complete, ack_at + 60)
                block_chars = len(block)
                ideal = len(ack) * low + config.reaction + block_chars * FRAME_BITS / data_baud
                errors_data.append(block_at - ack_at - ideal)
                time.sleep(0.05)
        finally:
            os.close(fd)
    return {
        "request -> identification": median(errors_ident),
        "ACK -> last data byte": median(errors_data),
    }


# --- the section -----------------------------------------------------------------------------


def _summary(cycles: list[Cycle]) -> dict[str, object]:
    best = min(cycles, key=lambda cycle: cycle.measured)
    return {
        "data_baud": best.data_baud,
        "measured_s": [round(cycle.measured, 4) for cycle in cycles],
        "measured_median_s": round(median([c.measured for c in cycles]), 4),
        "limit_s": round(best.limit, 4),
        "ratio_median": round(median([c.ratio for c in cycles]), 4),
        "chars": {
            "request": best.request_chars,
            "identification": best.ident_chars,
            "ack": best.ack_chars,
            "data": best.data_chars,
        },
        "reaction_s": best.reaction,
        "gap_by_phase_s": {
            name: round(median([c.phases[name] for c in cycles]), 4) for name in best.phases
        },
    }


def once_process(repeats: int) -> list[float]:
    """Seconds that ``iskra-me162 --once`` (no Domoticz, no state file) takes as a whole
    process (interpreter start, imports, config, one session at 9600 Bd, output) against the
    same simulated ME162."""
    times = []
    meter = PtyMeter(config=MeterConfig(baud_char="5", speedup=1.0))
    with meter as simulated, tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "iskra-me162"
        # No protocol line: the default ("auto") is what a user's --once goes through.
        config.write_text(f'port = "{simulated.port}"\nstate_file = ""\n')
        for _ in range(repeats):
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "iskra_me162", "--config", str(config), "--once"],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
                timeout=60,
            )
            times.append(time.monotonic() - started)
    return times


def run(quick: bool) -> Section:
    section = Section("Readout cycle against the wire limit (ME162, real pty, speedup 1.0)")
    low = run_cycles("5", highspeed=False, repeats=1 if quick else 3)
    high = run_cycles("5", highspeed=True, repeats=2 if quick else 5)
    results = {"300": _summary(low), "9600": _summary(high)}
    for label, summary in (("300 Bd only", results["300"]), ("switch to 9600", results["9600"])):
        section.add(f"{label}: cycle", summary["measured_median_s"], "s")
        section.add(f"{label}: wire limit", summary["limit_s"], "s")
        section.add(f"{label}: ratio", summary["ratio_median"], "x", goal="<= 1.10")
    sweep: dict[str, object] = {}
    if not quick:
        for baud_char in SWEEP:
            if baud_char == "5":
                sweep["9600"] = results["9600"]
                continue
            summary = _summary(run_cycles(baud_char, highspeed=True, repeats=2))
            sweep[str(summary["data_baud"])] = summary
            section.add(
                f"switch to {summary['data_baud']}: ratio", summary["ratio_median"], "x", "<= 1.10"
            )
    alone = {"9600": simulator_alone("5", 1 if quick else 3)}
    if not quick:
        alone["300"] = simulator_alone("0", 1)
    for label, errors in alone.items():
        for phase, error in errors.items():
            section.add(
                f"simulator alone, {label}: {phase}",
                error * 1000,
                "ms late",
                note="bare reader vs the ideal",
            )
    # --once as a whole process against the meter's own session time (the wire limit at 9600);
    # the simulator looks for a reader every 50 ms while nobody has its pty open, up to 50 ms
    # that a real meter would not add.
    once = once_process(2 if quick else 5)
    once_ratio = median(once) / float(results["9600"]["limit_s"])  # type: ignore[arg-type]
    section.add("--once as a whole process", median(once), "s")
    section.add("--once / the meter's session", once_ratio, "x", goal="<= 1.25")
    section.details = {
        "cycles": results,
        "sweep": sweep,
        "simulator_alone_s": alone,
        "once_process_s": [round(t, 4) for t in once],
    }
    return section
