"""Every real IEC 62056-21 / D0 / DSMR capture in ../shared/testdata against expected.json.

Each file must parse to EVERY value listed for it (numeric entries: value, unit, raw, extra;
text entries: value None and the raw string, several groups joined with "|"). Files framed
STX..ETX BCC must go through the real mode C receivers, fed whole, byte by byte and split at
every point; the Actaris capture, whose BCC does not match, must be rejected there.
"""

from __future__ import annotations

import itertools
import json
import random
from decimal import Decimal
from functools import cache

import pytest

from iskra_me162.errors import ChecksumError
from iskra_me162.protocols.iec62056_21 import (
    DataReceiver,
    IdentificationReceiver,
    parse_readout,
)
from tests.testdata import TESTDATA, captures, require_testdata

FILES = captures("iec62056-21/")
DSMR_FILES = captures("iec62056-21/dsmr_")
BAD_BCC = "iec62056-21/actaris_ace3000-260__vzlogger.bin"


def _names_where(predicate) -> list[str]:
    """Captures whose expected.json entry satisfies ``predicate``; collection-safe like
    :func:`captures` (a placeholder name that skips when the test data is absent)."""
    path = TESTDATA / "expected.json"
    if not path.is_file():
        return ["<testdata missing>"]
    data = json.loads(path.read_text())
    return sorted(name for name in FILES if predicate(data[name]))


# STX..ETX BCC framing (valid or not) / with a valid BCC.
BCC_FILES = _names_where(lambda e: "bcc_valid" in e["checks"])
VALID_BCC_FILES = _names_where(lambda e: e["checks"].get("bcc_valid") is True)


@cache
def expected_exact() -> dict[str, dict]:
    # Read the numbers as Decimal, not float, so that every digit is compared exactly.
    path = require_testdata() / "expected.json"
    return json.loads(path.read_text(), parse_float=Decimal, parse_int=Decimal)


def capture(name: str) -> bytes:
    return (require_testdata() / name).read_bytes()


def entry(name: str) -> dict:
    return expected_exact()[name]


def readings_by_code(readings) -> dict[str, list]:
    result: dict[str, list] = {}
    for reading in readings:
        result.setdefault(reading.code.text, []).append(reading)
    return result


def assert_matches_expected(name: str, readings) -> None:
    want = entry(name)
    got = readings_by_code(readings)
    problems = []
    for code, spec in want["obis"].items():
        found = got.get(code, [])
        if len(found) != 1:
            problems.append(f"{code}: found {len(found)} readings")
            continue
        reading = found[0]
        actual = (reading.value, reading.unit, reading.raw, list(reading.extra))
        wanted = (spec["value"], spec["unit"], spec["raw"], spec.get("extra", []))
        if actual != wanted or not isinstance(reading.value, Decimal):
            problems.append(f"{code}: got {actual}, want {wanted}")
    for code, text in want["text"].items():
        found = got.get(code, [])
        if len(found) != 1:
            problems.append(f"{code}: found {len(found)} readings")
            continue
        reading = found[0]
        joined = "|".join((reading.raw, *reading.extra))
        if reading.value is not None or joined != text:
            problems.append(f"{code}: got value {reading.value!r} raw {joined!r}, want {text!r}")
    assert not problems, f"{name}:\n" + "\n".join(problems)
    assert len(want["obis"]) + len(want["text"]) > 0


@pytest.mark.parametrize("name", FILES)
def test_capture_parses_to_every_expected_value(name):
    identification, readings = parse_readout(capture(name))
    assert identification is not None
    assert identification.raw.decode("ascii") == entry(name)["ident"]
    assert_matches_expected(name, readings)
    # Every data line of the capture yields exactly one reading (no line lost or doubled).
    assert len(readings) == entry(name)["n_data_lines"]


def test_the_capture_set_is_complete():
    # Guards against a silently empty parametrisation (e.g. a renamed folder).
    require_testdata()
    assert len(FILES) == 15
    assert len(DSMR_FILES) == 4
    assert BAD_BCC in BCC_FILES and BAD_BCC not in VALID_BCC_FILES
    assert len(VALID_BCC_FILES) == 3  # MT174, ZPA GH305 a and b


def run_mode_c(data: bytes, chunks: list[bytes] | None = None):
    """Drive IdentificationReceiver then DataReceiver as the port layer does."""
    ident_rx = IdentificationReceiver()
    data_rx = None
    for chunk in chunks if chunks is not None else [data]:
        if data_rx is None:
            ident_rx.feed(chunk)
            if ident_rx.result() is not None:
                data_rx = DataReceiver(ack=b"\x06050\r\n")
                data_rx.feed(ident_rx.trailing_data)
        else:
            data_rx.feed(chunk)
    assert data_rx is not None, "identification not found"
    return ident_rx.result(), data_rx.result()


def splits(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted(set(points))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("name", VALID_BCC_FILES)
def test_mode_c_receiver_accepts_the_valid_bcc_captures(name):
    identification, block = run_mode_c(capture(name))
    assert identification.raw.decode("ascii") == entry(name)["ident"]
    assert block is not None
    assert_matches_expected(name, block.readings)


def test_mode_c_receiver_rejects_the_bad_bcc_capture():
    require_testdata()
    assert entry(BAD_BCC)["checks"]["bcc_valid"] is False
    data = capture(BAD_BCC)
    with pytest.raises(ChecksumError):
        run_mode_c(data)
    # Byte by byte as well: the values are never handed out.
    ident_rx = IdentificationReceiver()
    data_rx = DataReceiver()
    with pytest.raises(ChecksumError):
        for byte in data:
            if ident_rx.result() is None:
                ident_rx.feed(bytes([byte]))
                if ident_rx.result() is not None:
                    data_rx.feed(ident_rx.trailing_data)
            else:
                data_rx.feed(bytes([byte]))
    with pytest.raises(ChecksumError):
        data_rx.result()


@pytest.mark.parametrize("name", BCC_FILES)
def test_mode_c_receivers_every_single_split_point(name):
    data = capture(name)
    points = range(1, len(data))
    if len(data) > 2000:
        # The 9.5 kB MT174: every point in the identification and the block edges, plus
        # random ones in between (a full sweep would parse the block 9,500 times).
        rng = random.Random(name)
        points = [*range(1, 200), *range(len(data) - 200, len(data))]
        points += rng.sample(range(200, len(data) - 200), 300)
    for point in points:
        if name == BAD_BCC:
            with pytest.raises(ChecksumError):
                run_mode_c(data, splits(data, [point]))
            continue
        identification, block = run_mode_c(data, splits(data, [point]))
        assert block is not None, point
        assert identification.raw.decode("ascii") == entry(name)["ident"]
        assert_matches_expected(name, block.readings)


@pytest.mark.parametrize("name", VALID_BCC_FILES)
def test_mode_c_receivers_byte_by_byte_and_random_splits(name):
    data = capture(name)
    _, block = run_mode_c(data, [bytes([b]) for b in data])
    assert_matches_expected(name, block.readings)
    rng = random.Random(len(data))
    for _ in range(30):
        points = rng.sample(range(1, len(data)), rng.randint(2, 12))
        _, block = run_mode_c(data, splits(data, points))
        assert_matches_expected(name, block.readings)


def test_noise_with_a_slash_before_a_real_identification():
    require_testdata()
    name = "iec62056-21/zpa_gh305_a__tibberlink.bin"
    identification, block = run_mode_c(b"\x7f\x00/\x01\x02" + capture(name))
    assert identification.raw.decode("ascii") == entry(name)["ident"]
    assert_matches_expected(name, block.readings)
