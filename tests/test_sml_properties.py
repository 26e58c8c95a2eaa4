"""Property tests: whatever bytes arrive, the SML decoder raises only our own errors, returns
only frames whose CRC is right, and loses no good frame to garbage or to a cut-off frame."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from iskra_me162.errors import IskraError
from iskra_me162.protocols.sml import (
    SmlFrame,
    SmlStreamReader,
    decode_bare_messages,
    decode_messages,
)
from tests import sml_frames
from tests.sml_frames import UNIT_W, UNIT_WH, Entry
from tests.testdata import TESTDATA, captures, require_testdata

# Generous: a hang shows up as a failure, a loaded 2-core machine does not.
SETTINGS = settings(
    max_examples=300,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SML_CAPTURES = captures("sml/")
FRAMED = [name for name in SML_CAPTURES if "_msgonly_" not in name]
BARE = [name for name in SML_CAPTURES if "_msgonly_" in name]


def _load(names: list[str]) -> list[bytes]:
    # At collection time: an absent testdata folder gives no examples, and the tests that
    # use them skip through require_testdata().
    if not (TESTDATA / "expected.json").is_file():
        return [b""]
    return [(TESTDATA / name).read_bytes() for name in names]


FRAMED_BYTES = _load(FRAMED)
BARE_BYTES = _load(BARE)


def _crc_is_right(frame: SmlFrame) -> bool:
    """Check a returned frame with the test encoder's own bit-by-bit CRC."""
    raw = frame.raw
    return sml_frames.crc_bytes(raw[:-2], frame.crc_variant) == raw[-2:]


def _drain(reader: SmlStreamReader) -> list[SmlFrame]:
    frames = list(reader.frames())
    for frame in frames:
        assert _crc_is_right(frame), frame.raw.hex()
        assert frame.messages
    return frames


@st.composite
def _mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate"]))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[where] = draw(st.sampled_from([0x00, 0x01, 0x1B, 0x1A, 0x76, 0x77, 0xFF]))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[where:where] = data[where : where + draw(st.integers(1, 64))]
    return bytes(data)


_chunk_sizes = st.lists(st.integers(1, 600), min_size=1, max_size=20)


def _feed(reader: SmlStreamReader, data: bytes, sizes: list[int]) -> list[SmlFrame]:
    frames = []
    index = 0
    turn = 0
    while index < len(data):
        size = sizes[turn % len(sizes)]
        reader.add(data[index : index + size])
        frames.extend(_drain(reader))
        index += size
        turn += 1
    return frames


@SETTINGS
@given(data=st.binary(max_size=3000), sizes=_chunk_sizes)
def test_arbitrary_bytes_never_raise_and_never_yield_a_bad_frame(data, sizes):
    reader = SmlStreamReader(max_buffer=1024)
    _feed(reader, data, sizes)
    assert reader.buffered <= 1024


@SETTINGS
@given(
    data=st.lists(
        st.sampled_from([sml_frames.START, sml_frames.ESCAPE, b"\x1a", b"\x00\x01", b"\x76"])
        | st.binary(max_size=12),
        max_size=60,
    ).map(b"".join),
    sizes=_chunk_sizes,
)
def test_escape_heavy_noise_never_raises(data, sizes):
    reader = SmlStreamReader(max_buffer=512)
    _feed(reader, data, sizes)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_bare_decoder_raises_only_our_errors(data):
    # Anything but an IskraError (IndexError, RecursionError, ...) fails the test.
    with contextlib.suppress(IskraError):
        decode_messages(data)


@SETTINGS
@given(data=st.data())
def test_mutated_framed_captures(data):
    require_testdata()
    mutated = data.draw(_mutated(FRAMED_BYTES))
    reader = SmlStreamReader()
    frames = _feed(reader, mutated, data.draw(_chunk_sizes))
    for frame in frames:
        # A frame with a right CRC can only be one of the originals, unchanged.
        assert frame.raw in FRAMED_BYTES


@SETTINGS
@given(data=st.data())
def test_mutated_bare_captures_raise_only_our_errors(data):
    require_testdata()
    mutated = data.draw(_mutated(BARE_BYTES))
    with contextlib.suppress(IskraError):
        decode_bare_messages(mutated)


@pytest.mark.parametrize("index", range(len(FRAMED_BYTES)))
def test_every_single_bit_error_in_a_capture_is_caught(index):
    require_testdata()
    original = FRAMED_BYTES[index]
    for position in range(len(original)):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[position] ^= 1 << bit
            reader = SmlStreamReader()
            reader.add(bytes(damaged))
            assert reader.get_frame() is None, (position, bit)


# --- generated streams -----------------------------------------------------------------------


@st.composite
def _frames(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    values = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4))
    entries = [
        Entry(f"1-0:1.8.{index}*255", value, unit=UNIT_WH, scaler=-1)
        for index, value in enumerate(values)
    ]
    entries.append(Entry("1-0:96.1.0*255", draw(st.binary(min_size=1, max_size=40))))
    variant = draw(st.sampled_from(sml_frames.CRC_VARIANTS))
    return sml_frames.sml_frame(entries, crc_variant=variant), values


_noise = st.binary(max_size=40).map(lambda chunk: chunk.replace(b"\x1b", b"\x2b"))


@SETTINGS
@given(
    parts=st.lists(st.tuples(_noise, _frames(), st.integers(0, 100)), min_size=1, max_size=6),
    sizes=_chunk_sizes,
)
def test_good_frames_survive_noise_and_cut_frames_between_them(parts, sizes):
    stream = b""
    wanted = []
    for noise, (frame, values), cut_percent in parts:
        stream += noise
        cut = len(frame) * cut_percent // 100
        if cut_percent < 100:
            # a cut-off copy of the frame, then the frame itself
            assume(cut > 0)
            stream += frame[:cut]
        stream += frame
        wanted.append(values)
    reader = SmlStreamReader()
    frames = _feed(reader, stream, sizes)
    got = [[entry.value for entry in frame.entries[:-1]] for frame in frames]
    assert got == wanted


@SETTINGS
@given(
    value=st.integers(-(2**63), 2**63 - 1),
    scaler=st.integers(-128, 127),
    width=st.integers(1, 8),
)
def test_scaled_value_round_trip_is_exact(value, scaler, width):
    assume(-(2 ** (8 * width - 1)) <= value < 2 ** (8 * width - 1))
    data = sml_frames.sml_frame(
        [Entry("1-0:16.7.0*255", value, unit=UNIT_W, scaler=scaler, width=width, signed=True)]
    )
    reader = SmlStreamReader()
    reader.add(data)
    (frame,) = _drain(reader)
    assert frame.entries[0].scaled_value == Decimal(value) * Decimal(10) ** scaler
