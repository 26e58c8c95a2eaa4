"""A mode C session always ends: the overall deadlines of :class:`iskra_me162.meters.IecMeter`,
and a push meter on a mode C setting, over real pseudo-terminals."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from iskra_me162.errors import MeterTimeout, WrongProtocol
from iskra_me162.meters import IecMeter
from iskra_me162.port import Port
from iskra_me162.simulator.sml_push import SmlPtyMeter, SmlPushConfig
from tests.testdata import require_testdata

REPO = Path(__file__).resolve().parent.parent


class _Sender:
    """The far side of a pty that keeps writing ``chunk`` every ``every`` seconds, asked or not
    (a push meter, or line noise): the shape of input that once kept a session waiting."""

    def __init__(self, chunk: bytes, every: float) -> None:
        self.main, replica = os.openpty()
        tty.setraw(replica)
        self.path = os.ttyname(replica)
        os.close(replica)
        self._chunk, self._every = chunk, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with contextlib.suppress(OSError):  # nobody has the other side open: lost
                os.write(self.main, self._chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.main)


@pytest.fixture
def sender() -> Iterator[type[_Sender]]:
    made: list[_Sender] = []

    def make(chunk: bytes, every: float) -> _Sender:
        made.append(_Sender(chunk, every))
        return made[-1]

    yield make  # type: ignore[misc]
    for one in made:
        one.close()


def iec_meter(path: str) -> IecMeter:
    port = Port(path, baudrate=300, serial_format="7E1", seven_bit_line=True, tick=lambda: None)
    return IecMeter(port, use_highspeed=True, baud_switch_delay=0.1)


def test_a_byte_every_half_second_cannot_hold_the_identification(sender):
    noise = sender(b"\x55", 0.5)  # never a '/', never an identification
    meter = iec_meter(noise.path)
    started = time.monotonic()
    try:
        with pytest.raises(MeterTimeout, match=r"identification did not finish.*SML push meter"):
            meter.read()
    finally:
        meter.close()
    assert time.monotonic() - started < 10


def test_a_data_message_that_never_ends_ends_the_session(sender):
    # A valid identification (no speed switch), then a STX and one byte after another.
    dripping = sender(b"/ISK0ME162-0033\r\n\x021.8.0(", 0.2)
    meter = iec_meter(dripping.path)
    meter.longest_readout = 64  # the deadline of a 64-byte message at 300 baud: 2 + 2.1 s
    started = time.monotonic()
    try:
        with pytest.raises(MeterTimeout, match="data readout did not finish"):
            meter.read()
    finally:
        meter.close()
    assert time.monotonic() - started < 8


def test_sml_frames_passed_through_unchanged_name_sml_at_once(sender):
    frame = (require_testdata() / "sml" / "iskra_isk00-7034__tibberlink.bin").read_bytes()
    pushing = sender(frame, 1.0)
    meter = iec_meter(pushing.path)
    started = time.monotonic()
    try:
        with pytest.raises(WrongProtocol, match=r'pushes SML.*protocol = "sml"'):
            meter.read()
    finally:
        meter.close()
    assert time.monotonic() - started < 5


def test_a_push_meter_at_the_wrong_speed_ends_the_session_naming_sml(tmp_path):
    # Our own SML meter garbles what a 300 baud 7E1 reader hears, as a real UART would.
    with SmlPtyMeter(link=str(tmp_path / "ttyIR"), config=SmlPushConfig(interval=1.0)):
        meter = iec_meter(str(tmp_path / "ttyIR"))
        started = time.monotonic()
        try:
            with pytest.raises((MeterTimeout, WrongProtocol), match="SML"):
                meter.read()
        finally:
            meter.close()
    assert time.monotonic() - started < 30


def test_once_on_an_sml_meter_with_the_mode_c_setting_exits_non_zero_naming_sml(tmp_path):
    with SmlPtyMeter(link=str(tmp_path / "ttyIR"), config=SmlPushConfig(interval=1.0)):
        config = tmp_path / "iskra-me162"
        config.write_text(
            f'port = "{tmp_path / "ttyIR"}"\nprotocol = "iec62056-21"\nstate_file = ""\n'
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "iskra_me162", "--config", str(config), "--once"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    assert "SML" in done.stderr and 'protocol = "sml"' in done.stderr
