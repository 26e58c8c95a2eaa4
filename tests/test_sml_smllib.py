"""Differential test: our SML decoder and SmlLib (PyPI ``smllib``, test-only) agree.

On every real capture and on generated frames (random entries, widths, signs, scalers, octet
strings full of 1b1b1b1b escapes, every CRC variant SmlLib supports), both decoders must give
the same entries: OBIS code, status, unit, scaler, raw value, value time, and scaled value.
"""

from __future__ import annotations

import math
from binascii import a2b_hex
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smllib import SmlStreamReader as LibStreamReader
from smllib.errors import CrcError
from smllib.sml import SmlGetListResponse
from smllib.sml_frame import SmlFrame as LibFrame

from iskra_me162.obis import ObisCode
from iskra_me162.protocols.sml import (
    SmlFrame,
    SmlListEntry,
    SmlStreamReader,
    decode_bare_messages,
)
from iskra_me162.protocols.sml_crc import CRC_KERMIT_MSB_FIRST, CRC_X25_LSB_FIRST
from iskra_me162.protocols.sml_messages import TIME_BARE, TIME_SEC_INDEX, TIME_TIMESTAMP
from tests import sml_frames
from tests.sml_frames import Entry
from tests.testdata import captures, require_testdata

SML_CAPTURES = captures("sml/")
BAD_FRAME_CRC = "sml/emh_issue912__tibberlink.bin"


def _lib_entries(lib_frame: LibFrame) -> list:
    entries = []
    for message in lib_frame.parse_frame():
        if isinstance(message.message_body, SmlGetListResponse):
            entries.extend(message.message_body.val_list)
    return entries


def _lib_text(value: bytes) -> str:
    # SmlLib shows an octet string as text when its UTF-8 decoding is alphanumeric, else hex.
    decoded = a2b_hex(value.hex()).decode(errors="ignore")
    return decoded if decoded.isalnum() else value.hex()


def _assert_same(ours: SmlListEntry, theirs: object) -> int:
    """Compare one entry; returns 1 when a numeric value was compared, else 0."""
    code = ObisCode.from_bytes(ours.obj_name)
    assert theirs.obis == ours.obj_name.hex()
    assert theirs.obis.obis_code == str(code)
    assert (theirs.status, theirs.unit, theirs.scaler) == (ours.status, ours.unit, ours.scaler)
    if ours.val_time is None:
        assert theirs.val_time is None
    elif ours.val_time.kind in (TIME_SEC_INDEX, TIME_BARE):
        assert theirs.val_time == ours.val_time.seconds
    elif ours.val_time.kind == TIME_TIMESTAMP:
        assert theirs.val_time == datetime.fromtimestamp(ours.val_time.seconds, UTC)
    value = ours.value
    if type(value) is int:
        assert theirs.value == value, str(code)
        if ours.scaler is not None:
            # SmlLib works in float and rounds; our exact Decimal must agree to 1e-12.
            assert math.isclose(theirs.get_value(), float(ours.scaled_value), rel_tol=1e-12)
        return 1
    if type(value) is bytes:
        assert theirs.value == _lib_text(value), str(code)
    elif type(value) is bool:
        assert theirs.value is value
    elif type(value) is tuple:
        # A list value: SmlLib only understands the SML_Time choice (secIndex) there.
        assert value[0] == ("uint", 1)
        assert value[1][1][-1] == ("uint", theirs.value)
    return 0


def _assert_frames_agree(ours: SmlFrame, lib_frame: LibFrame) -> int:
    theirs = _lib_entries(lib_frame)
    assert len(ours.entries) == len(theirs)
    return sum(_assert_same(mine, other) for mine, other in zip(ours.entries, theirs, strict=True))


@pytest.mark.parametrize("name", SML_CAPTURES)
def test_captures_agree_with_smllib(name):
    data = (require_testdata() / name).read_bytes()
    if "_msgonly_" in name:
        numbers = _assert_frames_agree(decode_bare_messages(data), LibFrame(data))
        assert numbers >= 3
        return
    crc = "kermit" if "kermit" in name else "x25"
    lib_reader = LibStreamReader(crc=crc)
    lib_reader.add(data)
    reader = SmlStreamReader()
    reader.add(data)
    if name == BAD_FRAME_CRC:
        # Both refuse the frame; its messages still decode alike through the bare APIs.
        with pytest.raises(CrcError):
            lib_reader.get_frame()
        assert reader.get_frame() is None and reader.crc_errors == 1
        payload = data[8 : len(data) - 8 - data[-3]]
        assert _assert_frames_agree(decode_bare_messages(payload), LibFrame(payload)) == 7
        return
    frame = reader.get_frame()
    assert frame is not None
    assert _assert_frames_agree(frame, lib_reader.get_frame()) >= 1


# --- generated frames ------------------------------------------------------------------------

_UNITS = st.sampled_from([None, 8, 27, 28, 29, 30, 31, 32, 33, 35, 44])
_ESCAPE_RICH_BYTES = st.lists(
    st.sampled_from([b"\x1b\x1b\x1b\x1b", b"\x1b", b"\x1a", b"\x01\x01\x01\x01", b"\x00", b"A"])
    | st.binary(min_size=1, max_size=4),
    min_size=1,
    max_size=12,
).map(b"".join)


@st.composite
def _integer_entries(draw: st.DrawFn) -> Entry:
    width = draw(st.integers(1, 8))
    is_signed = draw(st.booleans())
    bits = 8 * width
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if is_signed else (0, 2**bits - 1)
    return Entry(
        obis=draw(st.binary(min_size=6, max_size=6)),
        value=draw(st.integers(low, high)),
        unit=draw(_UNITS),
        scaler=draw(st.none() | st.integers(-128, 127)),
        status=draw(st.none() | st.integers(0, 2**32 - 1)),
        val_time=draw(st.none() | st.integers(0, 2**32 - 1)),
        width=width,
        signed=is_signed,
    )


_text_entries = st.builds(
    Entry,
    obis=st.binary(min_size=6, max_size=6),
    value=_ESCAPE_RICH_BYTES | st.sampled_from([b"EMH", b"ISK", b"1.02.007"]),
)
_bool_entries = st.builds(Entry, obis=st.binary(min_size=6, max_size=6), value=st.booleans())
_entries = st.lists(_integer_entries() | _text_entries | _bool_entries, min_size=1, max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=_entries,
    server_id=_ESCAPE_RICH_BYTES,
    kermit=st.booleans(),
    sensor_time=st.none() | st.integers(0, 2**32 - 1),
)
def test_generated_frames_agree_with_smllib(entries, server_id, kermit, sensor_time):
    variant = CRC_KERMIT_MSB_FIRST if kermit else CRC_X25_LSB_FIRST
    data = sml_frames.sml_frame(
        entries, server_id=server_id, crc_variant=variant, sensor_time=sensor_time
    )
    reader = SmlStreamReader()
    reader.add(data)
    frame = reader.get_frame()
    assert frame is not None, reader.last_decode_error
    assert frame.crc_variant == variant
    assert frame.server_id == server_id
    lib_reader = LibStreamReader(crc="kermit" if kermit else "x25")
    lib_reader.add(data)
    _assert_frames_agree(frame, lib_reader.get_frame())
    # and the values are the ones that were sent
    for sent, got in zip(entries, frame.entries, strict=True):
        assert got.obj_name == sent.obis
        assert got.value == sent.value
