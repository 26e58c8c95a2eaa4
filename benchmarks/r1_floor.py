"""The floor under live power's CPU: the least a Python reader does for the same R1 polls.

``python -m benchmarks.r1_floor PORT SECONDS`` opens ``PORT`` with pyserial, enters
programming mode (request, ``ACK 0 Z 1``, ``P0``) and then, for ``SECONDS``, polls 1.8.0 and
2.8.0 with R1 every 0.5 s exactly as :mod:`iskra_me162.live_meter` paces them: two wake-ups a
cycle (one to read an answer and send the next R1, the cycle's last answer read at the next
poll), each answer read in one piece and checked by ``iec62056_21.RegisterReceiver``. Nothing
else: no derive stage, no sinks, no health, no logging. ``benchmarks/live_power.py`` runs it
beside the live daemon in the same CPU window, so the daemon's CPU can be read against what the
polls alone cost on the same machine at the same moment (this machine is shared: absolute
figures move from run to run, the ratio much less).

It is a measuring stick, not a reader: no error handling beyond a clear exit.
"""

from __future__ import annotations

import sys
import time

import serial

from iskra_me162.protocols import iec62056_21 as iec

POLL_INTERVAL = 0.5  # live_power_interval's default
REACTION_S = 0.2  # the ME162's reaction time (its identification's upper-case third letter)
ANSWER_S = 20 * 10 / 9600 + 0.005  # STX (0012345.678*kWh) ETX BCC at 9600 Bd, and a margin


def _read(port: serial.Serial, register: str, deadline: float) -> iec.RegisterValue:
    receiver = iec.RegisterReceiver(register)
    while (answer := receiver.result()) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"r1_floor: no answer for {register}")
        receiver.feed(port.read(port.in_waiting or 1))
    return answer


def _enter(port: serial.Serial) -> None:
    port.write(iec.REQUEST)
    port.flush()
    deadline = time.monotonic() + 5
    receiver = iec.IdentificationReceiver()
    while (identification := receiver.result()) is None:
        if time.monotonic() > deadline:
            raise SystemExit("r1_floor: no identification")
        receiver.feed(port.read(port.in_waiting or 1))
    time.sleep(identification.reaction_time)
    port.write(iec.build_ack(identification, True, option=iec.PROGRAMMING_MODE))
    port.flush()
    time.sleep(0.3)
    port.baudrate = iec.data_baudrate(identification, True)
    operand = iec.OperandReceiver()
    deadline = time.monotonic() + 5
    while operand.result() is None:
        if time.monotonic() > deadline:
            raise SystemExit("r1_floor: no P0")
        operand.feed(port.read(port.in_waiting or 1))


def main(path: str, seconds: float) -> int:
    port = serial.Serial(path, 300, bytesize=7, parity="E", timeout=0.5)
    _enter(port)
    end = time.monotonic() + seconds
    next_poll = time.monotonic()
    pending: str | None = None
    while next_poll < end:
        if pending is not None:
            _read(port, pending, next_poll + 1)
        port.write(iec.build_read("1.8.0"))
        port.flush()
        time.sleep(REACTION_S + ANSWER_S + 13 * 10 / 9600)
        _read(port, "1.8.0", time.monotonic() + 1)
        port.write(iec.build_read("2.8.0"))
        port.flush()
        pending = "2.8.0"
        next_poll += POLL_INTERVAL
        time.sleep(max(0.0, next_poll - time.monotonic()))
    port.write(iec.build_break())
    port.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
