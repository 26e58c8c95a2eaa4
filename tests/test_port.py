"""The serial port layer on real pseudo-terminals: the code path real UARTs take."""

from __future__ import annotations

import contextlib
import logging
import os
import termios
import time

import pytest
import serial

from iskra_me162.errors import MeterTimeout, PortError
from iskra_me162.port import Port, escape


def read_n(port: Port, count: int, timeout: float = 5.0) -> bytes:
    """read_some() returns what has arrived so far, which may be less than was written."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count and time.monotonic() < deadline:
        data += port.read_some(deadline - time.monotonic())
    return data


@pytest.fixture
def pty():
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # a test may have closed the master (unplug)
            os.close(fd)


def test_open_read_write_and_timeout(pty):
    master, name = pty
    port = Port(name, 300, "7E1")
    port.open()
    try:
        port.write(b"/?!\r\n")
        assert os.read(master, 100) == b"/?!\r\n"
        os.write(master, b"/ISK5ME162-0033\r\n")
        assert read_n(port, 17) == b"/ISK5ME162-0033\r\n"
        started = time.monotonic()
        with pytest.raises(MeterTimeout, match=r"no answer from the meter within 0\.6 s"):
            port.read_some(0.6)
        assert time.monotonic() - started >= 0.6
    finally:
        port.close()


def test_a_pty_that_refuses_7e1_is_opened_as_8n1_with_masking(pty, caplog):
    # A meter emulator that set its pty up for 300 baud raw 8N1: asking for 7E1 is then a
    # change the pty cannot apply, and tcsetattr fails with EINVAL. A real UART never does.
    master, name = pty
    serial.Serial(name, 300, bytesize=8, parity="N", timeout=0.2).close()
    with pytest.raises(termios.error):
        serial.Serial(name, 300, bytesize=7, parity="E", timeout=0.2)
    caplog.set_level(logging.INFO)
    port = Port(name, 300, "7E1")
    port.open()
    try:
        os.write(master, bytes([0xAF, 0x49]))  # "/" with its parity bit, "I"
        assert read_n(port, 2) == b"/I"
        port.write(b"/?!\r\n")  # nothing added: a pty carries bytes, not bits
        assert os.read(master, 100) == b"/?!\r\n"
        port.set_baudrate(9600)
        port.set_baudrate(300)
        port.close()
        port.open()  # and again (a restarted daemon on the same emulator)
    finally:
        port.close()
    assert "cannot do 7E1 (a pseudo-terminal?)" in caplog.text


def test_eight_bit_adapter_on_a_seven_bit_line(pty):
    # serial_format 8N1 for a 7E1 meter: we add even parity when sending, mask when receiving.
    master, name = pty
    port = Port(name, 300, "8N1", seven_bit_line=True)
    port.open()
    try:
        port.write(b"/?!\r\n")
        sent = os.read(master, 100)
        assert sent == bytes([0xAF, 0x3F, 0x21, 0x8D, 0x0A])
        for byte in sent:
            assert bin(byte).count("1") % 2 == 0  # even parity in bit 7
        os.write(master, bytes([0xAF, 0xC9, 0x53]))
        assert read_n(port, 3) == b"/IS"
    finally:
        port.close()


def test_binary_lines_are_left_alone(pty):
    master, name = pty
    port = Port(name, 9600, "8N1", seven_bit_line=False)
    port.open()
    try:
        os.write(master, bytes([0x1B, 0x1B, 0xFF, 0x80]))
        assert read_n(port, 4) == bytes([0x1B, 0x1B, 0xFF, 0x80])
    finally:
        port.close()


def test_baud_rate_is_only_set_when_it_changes(pty):
    _master, name = pty
    port = Port(name, 300, "7E1")
    port.open()
    try:
        port.set_baudrate(300)  # unchanged: not re-applied (EINVAL on a 7E1 pty otherwise)
        port.set_baudrate(9600)
        assert port.baudrate == 9600
        port.set_baudrate(9600)
    finally:
        port.close()


def test_missing_device_and_vanishing_device(tmp_path, pty):
    with pytest.raises(PortError, match=r"cannot open .*/nope"):
        Port(str(tmp_path / "nope")).open()
    master, name = pty
    port = Port(name, 300, "7E1")
    port.open()
    os.close(master)  # the IR head is unplugged
    with pytest.raises(PortError):
        port.read_some(1.0)
    assert not port.is_open  # closed, so that the next cycle reopens it


def test_exclusive_open(pty):
    _master, name = pty
    first = Port(name, 300, "7E1")
    first.open()
    try:
        with pytest.raises(PortError, match="cannot open"):
            Port(name, 300, "7E1").open()
    finally:
        first.close()


def test_unknown_url_scheme_is_a_port_error():
    with pytest.raises(PortError, match="cannot open"):
        Port("nosuch://x").open()


def test_tick_runs_while_waiting_and_can_abort(pty):
    _master, name = pty
    ticks = []

    class Stop(BaseException):
        pass

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) >= 3:
            raise Stop

    port = Port(name, 300, "7E1", tick=tick)
    port.open()
    try:
        with pytest.raises(Stop):
            port.read_some(30.0)
    finally:
        port.close()
    assert ticks[-1] - ticks[0] < 2.0  # slices of READ_SLICE, not one long wait


def test_wire_log_escaping():
    assert escape(b"\x02C.1.0(123)\r\n!\r\n\x03L\x06\x7f") == (
        "<STX>C.1.0(123)\\r\\n!\\r\\n<ETX>L<ACK>\\x7f"
    )
