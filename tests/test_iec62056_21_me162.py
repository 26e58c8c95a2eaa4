"""A whole mode C session with an ISKRA ME162, driven with byte strings alone.

SYNTHETIC DATA: no ME162 capture under a usable license exists (see section C of
../shared/testdata/SOURCES.md). The readouts below are written by this test from the register
list and format ME162 users published there: ident ``/ISK5ME162-0033``, registers C.1.0, 0.0.0,
1.8.0, 1.8.1, 1.8.2, 2.8.0, 2.8.1, 2.8.2 (7.3-digit kWh) and F.F, every line CR LF, ``!`` CR LF
ETX BCC. The serial number and the counter values are invented. The BCC is computed here from
its definition (XOR of every byte after STX up to and including ETX), not by the code under test.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.iec62056_21 import (
    REQUEST,
    DataReceiver,
    IdentificationReceiver,
    build_ack,
    data_baudrate,
    parse_readout,
)

IDENT_LINE = b"/ISK5ME162-0033\r\n"
SERIAL = "28342193"  # invented

# (code, value as the meter writes it, unit); 1.8.0 = 1.8.1 + 1.8.2 as on a real two-tariff meter.
REGISTERS = [
    ("C.1.0", SERIAL, None),
    ("0.0.0", SERIAL, None),
    ("1.8.0", "0033402.264", "kWh"),
    ("1.8.1", "0021583.112", "kWh"),
    ("1.8.2", "0011819.152", "kWh"),
    ("2.8.0", "0000013.465", "kWh"),
    ("2.8.1", "0000009.001", "kWh"),
    ("2.8.2", "0000004.464", "kWh"),
    ("F.F", "0000000", None),
]


def xor_bcc(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def me162_block(registers=REGISTERS) -> bytes:
    """STX data ! CR LF ETX BCC exactly as the ME162 layout in SOURCES.md section C."""
    lines = "".join(
        f"{code}({value}*{unit})\r\n" if unit else f"{code}({value})\r\n"
        for code, value, unit in registers
    )
    body = lines.encode("ascii") + b"!\r\n\x03"
    return b"\x02" + body + bytes([xor_bcc(body)])


def session(
    meter_bytes_ident: bytes, meter_bytes_data: bytes, chunk: int | None = None, highspeed=True
):
    """Port-layer steps with byte strings: returns (identification, ack, baud, DataBlock)."""

    def chunks(data: bytes):
        if chunk is None:
            yield data
        else:
            for start in range(0, len(data), chunk):
                yield data[start : start + chunk]

    ident_rx = IdentificationReceiver()
    for piece in chunks(meter_bytes_ident):
        ident_rx.feed(piece)
        if ident_rx.result() is not None:
            break
    identification = ident_rx.result()
    assert identification is not None
    ack = build_ack(identification, highspeed)
    baud = data_baudrate(identification, highspeed)
    data_rx = DataReceiver(ack=ack)
    data_rx.feed(ident_rx.trailing_data)
    for piece in chunks(meter_bytes_data):
        data_rx.feed(piece)
    return identification, ack, baud, data_rx.result()


def assert_registers(readings, registers=REGISTERS) -> None:
    got = {reading.code.text: reading for reading in readings}
    assert list(got) == [code for code, _, _ in registers]
    for code, value, unit in registers:
        reading = got[code]
        assert reading.raw == (f"{value}*{unit}" if unit else value)
        if unit:
            assert reading.value == Decimal(value)
            assert reading.unit == unit
        else:
            assert reading.value is None  # serial numbers and the error register are text


def test_me162_session_at_9600_baud():
    # What the IR head delivers: the echo of our request, 0x7F noise (seen on Arduino set-ups),
    # then the identification; after our ACK, its echo, then the data message.
    ident_bytes = REQUEST + b"\x7f\x7f\x7f" + IDENT_LINE
    identification, ack, baud, block = session(ident_bytes, b"\x06050\r\n" + me162_block())
    assert identification.manufacturer == "ISK"
    assert identification.ident == "ME162-0033"
    assert identification.reaction_time == 0.2  # upper-case K: 200 ms
    assert ack == b"\x06\x30\x35\x30\x0d\x0a"
    assert baud == 9600
    assert_registers(block.readings)
    total = next(r for r in block.readings if r.code.means("1.8.0"))
    assert str(total.value) == "33402.264"


def test_me162_session_without_highspeed_stays_at_300():
    _, ack, baud, block = session(IDENT_LINE, me162_block(), highspeed=False)
    assert ack == b"\x06000\r\n"
    assert baud == 300
    assert_registers(block.readings)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_me162_session_in_small_chunks(chunk):
    _, _, _, block = session(REQUEST + IDENT_LINE, b"\x06050\r\n" + me162_block(), chunk=chunk)
    assert_registers(block.readings)


def test_me162_every_split_point_of_the_data_message():
    data = b"\x06050\r\n" + me162_block()
    for point in range(len(data) + 1):
        receiver = DataReceiver(ack=b"\x06050\r\n")
        receiver.feed(data[:point])
        receiver.feed(data[point:])
        assert_registers(receiver.result().readings)


def test_me162_random_splits_with_identification():
    rng = random.Random(162)
    stream = REQUEST + IDENT_LINE
    data = b"\x06050\r\n" + me162_block()
    for _ in range(200):
        ident_rx = IdentificationReceiver()
        points = sorted(rng.sample(range(1, len(stream)), 3))
        for a, b in zip([0, *points], [*points, len(stream)], strict=True):
            ident_rx.feed(stream[a:b])
        assert ident_rx.result().ident == "ME162-0033"
        data_rx = DataReceiver()
        points = sorted(rng.sample(range(1, len(data)), 5))
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            data_rx.feed(data[a:b])
        assert_registers(data_rx.result().readings)


def test_me162_data_arriving_with_the_identification():
    # If the meter's data follows in the same read as the identification (no gap), the bytes
    # after the identification line are not lost.
    _, _, _, block = session(IDENT_LINE + me162_block(), b"")
    assert_registers(block.readings)


def test_me162_every_corrupted_byte_is_rejected():
    """Change each byte of the message (STX excluded) in several ways: never a value out."""
    block = me162_block()
    for position in range(1, len(block)):
        for mask in (0x01, 0x02, 0x10, 0x40, 0x7F):
            corrupted = bytearray(block)
            corrupted[position] ^= mask
            receiver = DataReceiver()
            try:
                receiver.feed(bytes(corrupted))
            except (ChecksumError, ProtocolError):
                continue
            # No error: only possible when the change removed the ETX, so the block is still
            # incomplete; it must not have produced a result.
            assert receiver.result() is None, (position, mask)
            assert block[position] == 0x03 or corrupted[position] == 0x03, (position, mask)


def test_me162_changed_digit_is_rejected():
    # A realistic error: one digit of 1.8.0 flipped on the line. The BCC catches it.
    bad = me162_block().replace(b"0033402.264", b"0033402.265")
    with pytest.raises(ChecksumError):
        session(IDENT_LINE, bad)


def test_me162_parse_readout_of_the_whole_capture():
    identification, readings = parse_readout(
        REQUEST + IDENT_LINE + b"\x06050\r\n" + me162_block()
    )
    assert identification.raw == b"/ISK5ME162-0033"
    assert_registers(readings)


def test_me162_variant_with_other_counters():
    registers = [
        ("C.1.0", "47980000", None),
        ("0.0.0", "47980000", None),
        ("1.8.0", "0001034.727", "kWh"),
        ("1.8.1", "0000000.000", "kWh"),
        ("1.8.2", "0001034.727", "kWh"),
        ("2.8.0", "9999999.999", "kWh"),
        ("2.8.1", "9999999.999", "kWh"),
        ("2.8.2", "0000000.000", "kWh"),
        ("F.F", "0000000", None),
    ]
    _, _, _, block = session(IDENT_LINE, me162_block(registers))
    assert_registers(block.readings, registers)
