"""Unit tests of the IEC 62056-21 core: identification, ACK, BCC, receivers, data line parser.

Real captures are checked in test_iec62056_21_captures.py, the synthetic ME162 session in
test_iec62056_21_me162.py and hostile input in test_iec62056_21_fuzz.py.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.iec62056_21 import (
    BAUD_RATES,
    MAX_BLOCK_SIZE,
    MAX_IDENT_LINE,
    REQUEST,
    DataReceiver,
    IdentificationReceiver,
    bcc,
    build_ack,
    data_baudrate,
    parse_data_lines,
    parse_identification,
    parse_readout,
)

STX, ETX = b"\x02", b"\x03"


def xor_bcc(data: bytes) -> int:
    """The BCC by its definition, one byte at a time (independent of the code under test)."""
    result = 0
    for byte in data:
        result ^= byte
    return result


def mode_c_block(lines: str) -> bytes:
    """STX <lines> ! CR LF ETX BCC, with the BCC computed here from its definition."""
    body = lines.encode("ascii") + b"!\r\n" + ETX
    return STX + body + bytes([xor_bcc(body)])


def identify(data: bytes):
    receiver = IdentificationReceiver()
    receiver.feed(data)
    return receiver.result()


def receive_block(data: bytes, ack: bytes | None = None):
    receiver = DataReceiver(ack=ack)
    receiver.feed(data)
    return receiver.result()


def by_code(readings) -> dict:
    return {reading.code.text: reading for reading in readings}


# --- constants, ACK, BCC -------------------------------------------------------------------


def test_request_and_baud_table_follow_the_standard():
    assert REQUEST == b"/?!\r\n"
    assert BAUD_RATES == {
        "0": 300,
        "1": 600,
        "2": 1200,
        "3": 2400,
        "4": 4800,
        "5": 9600,
        "6": 19200,
    }


@pytest.mark.parametrize(
    ("line", "highspeed", "ack", "baud"),
    [
        (b"/ISK5ME162-0033", True, b"\x06050\r\n", 9600),
        (b"/ISK5ME162-0033", False, b"\x06000\r\n", 300),
        (b"/ISk6MT174", True, b"\x06060\r\n", 19200),
        (b"/LGZ4ZMF100AC.M27", True, b"\x06040\r\n", 4800),
        (b"/ACE0\\3k260V01.19", True, b"\x06000\r\n", 300),
        # mode B letter / reserved digit: no mode C rate, so never switch
        (b"/ABCEmodeB", True, b"\x06000\r\n", 300),
        (b"/ABC9reserved", True, b"\x06000\r\n", 300),
    ],
)
def test_ack_and_baud_after_it(line, highspeed, ack, baud):
    ident = parse_identification(line)
    assert build_ack(ident, highspeed) == ack
    assert data_baudrate(ident, highspeed) == baud


@pytest.mark.parametrize(
    "data",
    [b"", b"\x03", b"A", b"AB", b"ABC", bytes(range(256)), bytes(range(256)) * 37 + b"xyz"],
)
def test_bcc_is_the_xor_of_all_bytes(data):
    assert bcc(data) == xor_bcc(data)


def test_bcc_of_every_length_up_to_70():
    data = bytes((i * 37 + 11) % 256 for i in range(70))
    for length in range(len(data) + 1):
        assert bcc(data[:length]) == xor_bcc(data[:length]), length


def test_bcc_of_the_worked_example():
    # <STX>(0001034.727*kWh)<ETX>: the BCC covers everything after STX, ETX included.
    body = b"(0001034.727*kWh)\x03"
    assert bcc(body) == xor_bcc(body)
    assert 0 <= bcc(body) < 128


# --- identification ------------------------------------------------------------------------


def test_identification_fields():
    ident = parse_identification(b"/ISK5ME162-0033")
    assert ident.manufacturer == "ISK"
    assert ident.baud_char == "5"
    assert ident.baudrate == 9600
    assert ident.enhanced is None
    assert ident.ident == "ME162-0033"
    assert ident.reaction_time == 0.2
    assert ident.raw == b"/ISK5ME162-0033"


def test_lower_case_third_letter_means_20_ms():
    assert parse_identification(b"/ISk5MT174-0001").reaction_time == 0.02
    assert parse_identification(b"/IsK5MT174-0001").reaction_time == 0.2


def test_enhanced_capability_pair():
    ident = parse_identification(b"/ISk5\\2MT382-1000")
    assert (ident.manufacturer, ident.baud_char, ident.enhanced) == ("ISk", "5", "2")
    assert ident.ident == "MT382-1000"


def test_identification_with_a_space_and_digits_after_z():
    assert parse_identification(b"/ESY5Q3DA1024 V3.03").ident == "Q3DA1024 V3.03"
    ident = parse_identification(b"/LGZ52ZMD120APt.G03")
    assert (ident.baudrate, ident.ident) == (9600, "2ZMD120APt.G03")


@pytest.mark.parametrize(
    "line",
    [b"/", b"/IS", b"/ISK", b"/I5K5ME162", b"/ISK5ME\x01162", b"/IS\xcb5ME162", b"garbage"],
)
def test_bad_identification_lines_raise_protocol_error(line):
    with pytest.raises(ProtocolError, match="not an identification line"):
        parse_identification(line)


def test_eighth_bit_hint_in_the_error():
    # "/ISK5" with even parity as an 8N1 adapter would read it: 'K' (0x4B, 4 bits) keeps it clear.
    line = bytes(b | 0x80 if bin(b).count("1") % 2 else b for b in b"/ISK5ME162-0033")
    with pytest.raises(ProtocolError, match="8th bit"):
        parse_identification(line)
    # Masked to 7 bits by the port layer, the same line is fine.
    assert parse_identification(bytes(b & 0x7F for b in line)).ident == "ME162-0033"


def test_receiver_skips_request_echo_and_noise():
    data = b"\x7f\x7f\x00/?!\r\n\x00\x7f/ISK5ME162-0033\r\n"
    assert identify(data).ident == "ME162-0033"


def test_receiver_skips_echo_of_request_with_address():
    assert identify(b"/?12345678!\r\n/ISK5ME162-0033\r\n").manufacturer == "ISK"


def test_receiver_restarts_at_a_later_slash():
    # A noise "/" before the real line must not hide it.
    assert identify(b"/\x7f\x00//ISK5ME162-0033\r\n").ident == "ME162-0033"


def test_receiver_restarts_at_a_slash_in_a_later_chunk():
    receiver = IdentificationReceiver()
    for chunk in (b"\x7f/\x7f", b"\x00", b"/IS", b"K5ME162-0033\r", b"\n"):
        receiver.feed(chunk)
    assert receiver.result().ident == "ME162-0033"


def test_receiver_accepts_lf_only_line_end():
    assert identify(b"/LGZ4ZMF100AC.M27\n\n").ident == "ZMF100AC.M27"


def test_receiver_waits_for_the_line_end():
    receiver = IdentificationReceiver()
    receiver.feed(b"/?!\r\n/ISK5ME162-0033\r")
    assert receiver.result() is None
    receiver.feed(b"\n")
    assert receiver.result().ident == "ME162-0033"


def test_receiver_keeps_bytes_after_the_line():
    receiver = IdentificationReceiver()
    receiver.feed(b"/ISK5ME162-0033\r\n\x02abc")
    receiver.feed(b"def")
    assert receiver.trailing_data == b"\x02abcdef"


def test_receiver_nothing_but_noise_gives_nothing():
    receiver = IdentificationReceiver()
    receiver.feed(b"\x7f" * 10_000 + b"\x00" * 10_000)
    assert receiver.result() is None


def test_receiver_warns_once_about_a_parity_slash(caplog):
    # "/ISK5..." read as 8N1 from a 7E1 line: "/" has five 1 bits, so even parity sets bit 8.
    line = bytes(b | 0x80 if bin(b).count("1") % 2 else b for b in b"/ISK5ME162-0033\r\n")
    assert line[0] == 0xAF
    receiver = IdentificationReceiver()
    with caplog.at_level(logging.WARNING, logger="iskra_me162.protocols.iec62056_21"):
        receiver.feed(line)
        receiver.feed(line)
    assert receiver.result() is None
    assert caplog.text.count("8th bit set") == 1


def test_receiver_rejects_an_over_long_line_and_stays_failed():
    receiver = IdentificationReceiver()
    with pytest.raises(ProtocolError, match="longer than"):
        receiver.feed(b"/ISK5" + b"X" * MAX_IDENT_LINE)
    with pytest.raises(ProtocolError):
        receiver.result()
    with pytest.raises(ProtocolError):
        receiver.feed(b"\r\n")


def test_receiver_over_long_line_fed_byte_by_byte():
    receiver = IdentificationReceiver()
    with pytest.raises(ProtocolError, match="longer than"):
        for byte in b"/ISK5" + b"X" * (2 * MAX_IDENT_LINE):
            receiver.feed(bytes([byte]))


def test_receiver_rejects_a_garbage_line():
    receiver = IdentificationReceiver()
    with pytest.raises(ProtocolError, match="not an identification"):
        receiver.feed(b"/\x01\x02\x03\r\n/ISK5ME162-0033\r\n")


def test_receiver_bounds_bytes_fed_after_the_result():
    receiver = IdentificationReceiver()
    receiver.feed(b"/ISK5ME162-0033\r\n")
    with pytest.raises(ProtocolError):
        receiver.feed(b"\x00" * (MAX_BLOCK_SIZE + 1))


# --- data receiver -------------------------------------------------------------------------

ME162_LINES = "C.1.0(28342193)\r\n1.8.0(0033402.264*kWh)\r\nF.F(0000000)\r\n"


def test_data_block_values():
    block = receive_block(mode_c_block(ME162_LINES))
    readings = by_code(block.readings)
    assert readings["1.8.0"].value == Decimal("33402.264")
    assert readings["1.8.0"].unit == "kWh"
    assert readings["C.1.0"].value is None and readings["C.1.0"].raw == "28342193"
    assert block.text == ME162_LINES + "!\r\n"


def test_data_block_after_ack_echo_and_noise():
    ack = b"\x06050\r\n"
    data = ack + b"\x7f\x00\r\n" + mode_c_block(ME162_LINES) + b"\x7f"
    receiver = DataReceiver(ack=ack)
    receiver.feed(data)
    assert by_code(receiver.result().readings)["1.8.0"].value == Decimal("33402.264")
    assert receiver.trailing_data == b"\x7f"


def test_data_block_after_arbitrary_junk_before_stx():
    data = b"/ISK5ME162-0033\r\nhello\x01\x04\x05" + mode_c_block(ME162_LINES)
    assert len(receive_block(data).readings) == 3


def test_wrong_bcc_is_rejected_and_no_values_escape():
    block = bytearray(mode_c_block(ME162_LINES))
    block[-1] ^= 0x01
    receiver = DataReceiver()
    with pytest.raises(ChecksumError, match="BCC mismatch"):
        receiver.feed(bytes(block))
    with pytest.raises(ChecksumError):
        receiver.result()
    with pytest.raises(ChecksumError):
        receiver.feed(b"more")


def test_changed_digit_is_rejected():
    block = mode_c_block(ME162_LINES).replace(b"33402.264", b"33402.265")
    with pytest.raises(ChecksumError):
        receive_block(block)


def test_bcc_with_eighth_bit_mentions_parity():
    block = bytearray(mode_c_block(ME162_LINES))
    block[3] |= 0x80
    with pytest.raises(ChecksumError, match="8th bit"):
        receive_block(bytes(block))


def test_missing_bcc_means_not_complete():
    block = mode_c_block(ME162_LINES)
    receiver = DataReceiver()
    receiver.feed(block[:-1])
    assert receiver.result() is None
    receiver.feed(block[-1:])
    assert receiver.result() is not None


def test_block_without_end_mark_is_rejected_even_with_valid_bcc():
    body = b"1.8.0(0033402.264*kWh)\r\n" + ETX
    with pytest.raises(ProtocolError, match="does not end with '!'"):
        receive_block(STX + body + bytes([xor_bcc(body)]))


def test_empty_block_is_valid_and_has_no_readings():
    body = b"!\r\n" + ETX
    assert receive_block(STX + body + bytes([xor_bcc(body)])).readings == ()


def test_block_overflow_raises():
    receiver = DataReceiver(max_size=1000)
    receiver.feed(STX + b"1.8.0(1*kWh)\r\n" * 60)
    with pytest.raises(ProtocolError, match="longer than 1000"):
        receiver.feed(b"1.8.0(1*kWh)\r\n" * 20)


def test_block_overflow_byte_by_byte():
    receiver = DataReceiver(max_size=100)
    receiver.feed(STX)
    with pytest.raises(ProtocolError, match="longer than"):
        for _ in range(200):
            receiver.feed(b"x")


def test_no_stx_at_all_raises_after_the_bound():
    receiver = DataReceiver(max_size=1000)
    receiver.feed(b"\x7f" * 1000)
    assert receiver.result() is None
    with pytest.raises(ProtocolError, match="no STX"):
        receiver.feed(b"\x7f")


def test_default_bound_admits_a_large_readout():
    lines = "1-0:1.8.0*01(0006334.294*kWh)\r\n" * 1500  # ~48 kB, well above the MT174's 9.5 kB
    block = receive_block(mode_c_block(lines))
    assert len(block.readings) == 1500


def test_trailing_after_the_block_is_bounded():
    receiver = DataReceiver(max_size=100)
    receiver.feed(mode_c_block("1.8.0(1*kWh)\r\n"))
    receiver.feed(b"\x7f" * 100)
    with pytest.raises(ProtocolError):
        receiver.feed(b"\x7f")


def test_ack_echo_logged(caplog):
    ack = b"\x06050\r\n"
    with caplog.at_level(logging.DEBUG, logger="iskra_me162.protocols.iec62056_21"):
        receive_block(ack + mode_c_block(ME162_LINES), ack=ack)
    assert "echo of our ACK" in caplog.text


# --- data line parser ----------------------------------------------------------------------


def test_value_with_unit_is_exact_decimal():
    (reading,) = parse_data_lines("1-0:1.8.0*255(0008048.375*kWh)\r\n")
    assert isinstance(reading.value, Decimal)
    assert reading.value == Decimal("8048.375")
    assert str(reading.value) == "8048.375"
    assert (reading.unit, reading.raw, reading.extra) == ("kWh", "0008048.375*kWh", ())
    assert reading.code.text == "1-0:1.8.0*255"
    assert reading.code.means("1.8.0")


@pytest.mark.parametrize(
    ("line", "value", "unit"),
    [
        ("16.7.0(-003094*W)", Decimal(-3094), "W"),
        ("31.7.0(+000.8*A)", Decimal("0.8"), "A"),
        ("1.8.0(013925.5*)", Decimal("13925.5"), ""),
        ("1.8.1(032942.0231)", Decimal("32942.0231"), None),
        ("1.8.0( 123.4*kWh)", Decimal("123.4"), "kWh"),
        ("24.2.1(00981.443*m3)", Decimal("981.443"), "m3"),
        ("C.8.1(024616.21*h)", Decimal("24616.21"), "h"),
        ("1.7.0(1.*kW)", Decimal(1), "kW"),
    ],
)
def test_numeric_values(line, value, unit):
    (reading,) = parse_data_lines(line)
    assert (reading.value, reading.unit) == (value, unit)


@pytest.mark.parametrize(
    ("line", "raw"),
    [
        ("F.F(0000000)", "0000000"),  # integer without unit: status word
        ("C.1.0(28342193)", "28342193"),  # serial number
        ("0.0.0( 20000)", " 20000"),  # leading space kept
        ("1-0:0.2.0*255(1.03)", "1.03"),  # C = 0: firmware version, not a quantity
        ("0.2.0(V01.69#EEA3546C)", "V01.69#EEA3546C"),
        ("0-0:96.13.0()", ""),
        ("C.1.1(        )", "        "),
        ("1.8.0(12.5*k Wh)", "12.5*k Wh"),  # not a unit: keep it as text
        ("1.8.0(12.5*kWh*2)", "12.5*kWh*2"),
    ],
)
def test_text_values(line, raw):
    (reading,) = parse_data_lines(line)
    assert reading.value is None
    assert reading.unit is None
    assert reading.raw == raw


def test_second_group_goes_to_extra():
    (reading,) = parse_data_lines("1-0:1.6.0*255(02.468*kW)(1703100930)\r\n")
    assert (reading.value, reading.unit, reading.extra) == (Decimal("2.468"), "kW", ("1703100930",))


def test_dsmr_time_stamp_first_then_value():
    (reading,) = parse_data_lines("0-1:24.2.1(170102190000W)(00164.016*m3)\r\n")
    assert reading.value == Decimal("164.016")
    assert (reading.unit, reading.raw, reading.extra) == ("m3", "00164.016*m3", ("170102190000W",))


def test_dsmr_time_stamp_without_numeric_value_is_text_in_order():
    (reading,) = parse_data_lines("0-1:24.2.1(700101010000W)(00000000)")
    assert reading.value is None
    assert "|".join((reading.raw, *reading.extra)) == "700101010000W|00000000"


def test_dsmr_power_failure_log_is_text():
    line = "1-0:99.97.0(1)(0-0:96.7.19)(190326095015W)(0000002014*s)"
    (reading,) = parse_data_lines(line)
    assert reading.value is None
    assert "|".join((reading.raw, *reading.extra)) == "1|0-0:96.7.19|190326095015W|0000002014*s"


def test_letters_and_short_codes():
    readings = by_code(parse_data_lines("C.1.0(1)\nF.F(00)\n32.7(233*V)\n0.0(x)\nC.13.21(1*secs)"))
    assert readings["F.F"].code.c == 97 and readings["C.1.0"].code.c == 96
    assert readings["32.7"].value == 233 and readings["32.7"].code.e is None
    assert readings["C.13.21"].unit == "secs"


@pytest.mark.parametrize("end", ["\r\n", "\n", "\n\n", "\r\n\r\n", "\r"])
def test_line_ends(end):
    text = end.join(["1.8.1(1.5*kWh)", "1.8.2(2.5*kWh)", "F.F(00)", "!"]) + end
    assert [r.code.text for r in parse_data_lines(text)] == ["1.8.1", "1.8.2", "F.F"]


def test_parsing_stops_at_the_end_line():
    text = "1.8.0(1.0*kWh)\r\n!6EEE\r\n1.8.1(2.0*kWh)\r\n"
    assert [r.code.text for r in parse_data_lines(text)] == ["1.8.0"]


def test_several_data_sets_on_one_line():
    readings = parse_data_lines("F.F(00)C.1(1234)1.8.0(1.5*kWh)\r\n")
    assert [r.code.text for r in readings] == ["F.F", "C.1", "1.8.0"]


def test_trailing_garbage_after_a_data_set_keeps_the_data_set(caplog):
    with caplog.at_level(logging.DEBUG, logger="iskra_me162.protocols.iec62056_21"):
        (reading,) = parse_data_lines("1.8.0(013925.5*)Y\x02\x02\x01\x00!\r\n")
    assert reading.value == Decimal("13925.5")
    assert "ignored data line part" in caplog.text


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "(0033402.264*kWh)",  # no code
        "1.8.0",  # no value
        "1.8.0(12.3*kWh",  # unclosed
        "1.8.0)12(",
        "1..0(1*kWh)",  # not an OBIS code
        "1234.5678.9(1*kWh)",
        "\x00\x7f\xff",
        "1.8.0((1*kWh))",
    ],
)
def test_malformed_lines_are_ignored_with_a_debug_log(line, caplog):
    with caplog.at_level(logging.DEBUG, logger="iskra_me162.protocols.iec62056_21"):
        readings = parse_data_lines(f"1.8.1(1.0*kWh)\r\n{line}\r\n2.8.1(2.0*kWh)\r\n")
    assert [r.code.text for r in readings] == ["1.8.1", "2.8.1"]
    assert "ignored" in caplog.text


def test_parse_readout_without_identification_parses_lines():
    ident, readings = parse_readout(b"1.8.0(1.0*kWh)\r\n!\r\n")
    assert ident is None
    assert readings[0].value == 1


def test_parse_readout_with_garbage_identification_still_parses_lines():
    ident, readings = parse_readout(b"/\x01\x02\r\n1.8.0(1.0*kWh)\r\n")
    assert ident is None
    assert [r.code.text for r in readings] == ["1.8.0"]


def test_parse_readout_ignores_bcc():
    data = b"/ISK5ME162-0033\r\n" + STX + b"1.8.0(1.0*kWh)\r\n!\r\n" + ETX + b"\x00"
    ident, readings = parse_readout(data)
    assert ident.ident == "ME162-0033" and readings[0].value == 1


def test_parse_readout_reads_push_telegrams_without_stx():
    # D0 push (EMH) and DSMR P1 telegrams: no STX/ETX; the DSMR "!XXXX" CRC line ends the data.
    d0 = b"/EMH5----eHZ-E0018E\r\n\r\n1-0:1.8.1*255(032942.0231)\r\n!\r\n"
    ident, readings = parse_readout(d0)
    assert ident.manufacturer == "EMH"
    assert [(r.value, r.unit) for r in readings] == [(Decimal("32942.0231"), None)]
    dsmr = b"/KFM5KAIFA-METER\r\n\r\n1-0:1.8.1(001581.123*kWh)\r\n!6F4A\r\n0.0.0(1)\r\n"
    ident, readings = parse_readout(dsmr)
    assert ident.manufacturer == "KFM"
    assert [(r.value, r.unit) for r in readings] == [(Decimal("1581.123"), "kWh")]
