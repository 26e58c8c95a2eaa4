"""Hostile input for the IEC 62056-21 core (hypothesis property tests).

Arbitrary bytes, and mutations of the real captures and of a synthetic ME162 readout, must
never make the receivers or parsers raise anything but IskraError subclasses, and a readout
whose BCC does not verify must never yield values.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iskra_me162.errors import IskraError
from iskra_me162.obis import Reading
from iskra_me162.protocols.iec62056_21 import (
    DataReceiver,
    IdentificationReceiver,
    parse_data_lines,
    parse_readout,
)
from tests.testdata import TESTDATA, require_testdata

# No deadline: a loaded 2-core CI machine must not turn slowness into failures.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def xor_bcc(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def synthetic_me162() -> bytes:
    """SYNTHETIC ME162 readout (layout from SOURCES.md section C, invented values)."""
    body = (
        b"C.1.0(28342193)\r\n0.0.0(28342193)\r\n1.8.0(0033402.264*kWh)\r\n"
        b"1.8.1(0021583.112*kWh)\r\n1.8.2(0011819.152*kWh)\r\n2.8.0(0000013.465*kWh)\r\n"
        b"2.8.1(0000009.001*kWh)\r\n2.8.2(0000004.464*kWh)\r\nF.F(0000000)\r\n!\r\n\x03"
    )
    return b"/?!\r\n/ISK5ME162-0033\r\n\x06050\r\n\x02" + body + bytes([xor_bcc(body)])


def seeds() -> list[bytes]:
    """The synthetic ME162 readout plus every real IEC capture that is present."""
    result = [synthetic_me162()]
    folder = TESTDATA / "iec62056-21"
    if folder.is_dir():
        result += [path.read_bytes() for path in sorted(folder.glob("*.bin"))]
    return result


SEEDS = seeds()


def check_readings(readings) -> None:
    assert isinstance(readings, tuple)
    for reading in readings:
        assert isinstance(reading, Reading)
        assert reading.value is None or isinstance(reading.value, Decimal)
        assert reading.value is None or reading.value.is_finite()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def run_mode_c(chunks: list[bytes]):
    """Identification then data message; returns (stream after the ident, DataBlock|None)."""
    ident_rx = IdentificationReceiver()
    data_rx = None
    after_ident = b""
    for chunk in chunks:
        if data_rx is None:
            ident_rx.feed(chunk)
            if ident_rx.result() is not None:
                data_rx = DataReceiver(ack=b"\x06050\r\n")
                after_ident = ident_rx.trailing_data
                data_rx.feed(after_ident)
        else:
            after_ident += chunk
            data_rx.feed(chunk)
    return after_ident, (data_rx.result() if data_rx is not None else None)


def reference_bcc_ok(after_ident: bytes) -> bool:
    """Independent check: first STX, first ETX after it, the byte after that is the XOR."""
    stx = after_ident.index(2)
    etx = after_ident.index(3, stx + 1)
    return xor_bcc(after_ident[stx + 1 : etx + 1]) == after_ident[etx + 1]


def assert_only_our_errors(data: bytes, cuts: list[int]) -> None:
    chunks = chunked(data, cuts)
    try:
        after_ident, block = run_mode_c(chunks)
    except IskraError:
        pass
    else:
        if block is not None:
            assert reference_bcc_ok(after_ident), "a block with a bad BCC was accepted"
            check_readings(block.readings)
    _, readings = parse_readout(data)  # never raises
    check_readings(readings)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes(data, cuts):
    assert_only_our_errors(data, cuts)


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [b"/", b"?", b"!", b"\r", b"\n", b"\x02", b"\x03", b"\x06", b"\x7f", b"\x00", b"\xff",
             b"(", b")", b"*", b"ISK5", b"ME162", b"1.8.0", b"0033402.264", b"kWh", b"\\2", b"C."]
        ),
        max_size=200,
    ).map(b"".join),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_bytes_made_of_protocol_tokens(data, cuts):
    # Random bytes rarely form "/XXX5..." or STX...ETX; tokens reach the deeper states.
    assert_only_our_errors(data, cuts)


@st.composite
def mutated_capture(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        kind = draw(st.sampled_from(["flip", "replace", "insert", "delete", "duplicate"]))
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "replace" and data:
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[position : position + draw(st.integers(min_value=1, max_value=8))]
        elif kind == "duplicate" and data:
            data[position:position] = data[position : position + 16]
    return bytes(data)


@FUZZ
@given(mutated_capture(), st.lists(st.integers(min_value=0), max_size=8))
def test_mutated_captures(data, cuts):
    require_testdata()  # without the real captures only the synthetic seed would be mutated
    assert_only_our_errors(data, cuts)


@FUZZ
@given(st.text(max_size=2000))
def test_data_line_parser_never_raises_on_any_text(text):
    check_readings(parse_data_lines(text))


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            ["1-0:", "0-1:", "1.8.0", "C.1.0", "F.F", "*255", "(", ")", ")(", "*", "kWh", "-",
             "+", ".", "0", "9", " ", "\r\n", "\n", "!", "170102190000W", "\x00", "\u2028", "٣"]
        ),
        max_size=120,
    ).map("".join)
)
def test_data_line_parser_on_token_soup(text):
    check_readings(parse_data_lines(text))


LINE_LIKE = (
    r"\A([0-9]{1,3}-[0-9]{1,3}:)?[0-9CF]{1,3}\.[0-9CF]{1,3}(\.[0-9]{1,3})?(\*[0-9]{1,3})?"
    r"(\([ +-]?[0-9]{0,9}(\.[0-9]{0,9})?(\*[A-Za-z0-9]{0,4})?\)){1,4}\Z"
)


@settings(FUZZ, max_examples=100)  # generating from a regex is slow; 100 x 10 lines is plenty
@given(
    st.lists(st.from_regex(LINE_LIKE), max_size=10),
    st.sampled_from(["\r\n", "\n", "\n\n", "\r"]),
)
def test_data_line_parser_on_lines_that_look_real(lines, end):
    check_readings(parse_data_lines(end.join(lines)))


def test_maximum_demand_with_its_time():
    lines = ["1-0:1.6.0*255(02.468*kW)(1703100930)", "1.6.1(3.2*kW)(1702102000)(x)"]
    readings = parse_data_lines("\r\n".join(lines))
    assert readings[0].value == Decimal("2.468") and readings[0].unit == "kW"
    assert readings[0].extra == ("1703100930",)
    assert readings[1].value == Decimal("3.2")
    assert readings[1].extra == ("1702102000", "x")


@FUZZ
@given(
    st.from_regex(r"\A[1-9]\.8\.[0-4]\Z"),
    st.from_regex(r"\A[+-]?[0-9]{1,12}\.[0-9]{1,9}\Z"),
    st.from_regex(r"\A[A-Za-z0-9]{0,5}\Z"),
)
def test_numbers_with_unit_come_out_exact(code, number, unit):
    (reading,) = parse_data_lines(f"{code}({number}*{unit})\r\n!\r\n")
    assert reading.value == Decimal(number)
    assert reading.unit == unit
    assert reading.raw == f"{number}*{unit}"
    assert reading.code.text == code


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_truncated_seeds_never_yield_a_bad_block(index):
    """Every prefix of every seed: incomplete is None, never an exception of a foreign type."""
    data = SEEDS[index]
    step = max(1, len(data) // 400)
    for end in range(0, len(data) + 1, step):
        try:
            after_ident, block = run_mode_c([data[:end]])
        except IskraError:
            continue
        if block is not None:
            assert reference_bcc_ok(after_ident)
