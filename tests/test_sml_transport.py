"""SML transport v1: CRC variants, escapes, padding, garbage, truncation, bounded buffer."""

from __future__ import annotations

import os

import pytest
import smllib.crc.kermit
import smllib.crc.x25

from iskra_me162.protocols.sml import SmlStreamReader
from iskra_me162.protocols.sml_crc import (
    CRC_KERMIT_LSB_FIRST,
    CRC_KERMIT_MSB_FIRST,
    CRC_VARIANTS,
    CRC_X25_LSB_FIRST,
    CRC_X25_MSB_FIRST,
    crc16_kermit,
    crc16_x25,
    match_crc,
)
from iskra_me162.protocols.sml_transport import SmlTransportReader
from tests import sml_frames
from tests.sml_frames import UNIT_W, UNIT_WH, Entry

ENTRIES = [
    Entry("1-0:1.8.0*255", 123_456_789, unit=UNIT_WH, scaler=-1),
    Entry("1-0:16.7.0*255", -42, unit=UNIT_W, scaler=0, width=4),
]


def _frame(value: int = 1, **kwargs: object) -> bytes:
    return sml_frames.sml_frame([Entry("1-0:1.8.0*255", value, unit=UNIT_WH)], **kwargs)


def _values(reader: SmlStreamReader) -> list[int]:
    return [frame.entries[0].value for frame in reader.frames()]


# --- CRC -------------------------------------------------------------------------------------


def test_crc_check_values():
    assert crc16_x25(b"123456789") == 0x906E
    assert crc16_kermit(b"123456789") == 0x2189
    assert crc16_x25(b"") == 0x0000
    assert crc16_kermit(b"") == 0x0000


@pytest.mark.parametrize("length", [0, 1, 2, 7, 8, 63, 64, 255, 256, 1000, 4099])
def test_crc_agrees_with_bitwise_and_smllib_implementations(length):
    data = os.urandom(length)
    assert crc16_x25(data) == sml_frames.crc16(data, "x25")
    assert crc16_kermit(data) == sml_frames.crc16(data, "kermit")
    x25 = crc16_x25(data)
    assert smllib.crc.x25.get_crc(data) == (x25 & 0xFF) << 8 | x25 >> 8  # smllib swaps
    assert smllib.crc.kermit.get_crc(data) == crc16_kermit(data)


@pytest.mark.parametrize("variant", CRC_VARIANTS)
def test_match_crc_names_the_variant_that_was_used(variant):
    data = b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01 some frame bytes"
    received = int.from_bytes(sml_frames.crc_bytes(data, variant), "big")
    assert match_crc(data, received) == variant
    assert match_crc(data, received, [variant]) == variant
    others = [other for other in CRC_VARIANTS if other != variant]
    assert match_crc(data, received, others) is None
    assert match_crc(data + b"!", received) is None


# --- frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", CRC_VARIANTS)
def test_every_crc_variant_is_accepted_and_reported(variant):
    reader = SmlStreamReader()
    reader.add(sml_frames.sml_frame(ENTRIES, crc_variant=variant))
    frame = reader.get_frame()
    assert frame is not None
    assert frame.crc_variant == variant
    assert all(message.crc_ok for message in frame.messages)
    assert [entry.value for entry in frame.entries] == [123_456_789, -42]


def test_pinned_crc_variant_rejects_the_others():
    reader = SmlStreamReader(crc_variants=[CRC_X25_LSB_FIRST])
    reader.add(_frame(1, crc_variant=CRC_KERMIT_MSB_FIRST))
    reader.add(_frame(2, crc_variant=CRC_X25_MSB_FIRST))
    reader.add(_frame(3, crc_variant=CRC_KERMIT_LSB_FIRST))
    reader.add(_frame(4))
    assert _values(reader) == [4]
    assert reader.crc_errors == 3


def test_unknown_crc_variant_is_a_usage_error():
    with pytest.raises(ValueError, match="unknown CRC variants"):
        SmlStreamReader(crc_variants=["crc32"])
    with pytest.raises(ValueError, match="too small"):
        SmlStreamReader(max_buffer=10)


def test_bad_crc_is_dropped_counted_and_the_next_frame_survives():
    good = _frame(7)
    broken = bytearray(_frame(6))
    broken[40] ^= 0x01  # one bit flipped in the payload
    reader = SmlStreamReader()
    reader.add(bytes(broken) + good)
    assert _values(reader) == [7]
    assert (reader.crc_errors, reader.frames_ok) == (1, 1)
    assert reader.dropped_bytes == len(broken)


@pytest.mark.parametrize("where", ["crc", "padding count"])
def test_damaged_end_sequence_is_a_crc_error(where):
    frame = bytearray(_frame(5))
    frame[-1 if where == "crc" else -3] ^= 0x10
    reader = SmlStreamReader()
    reader.add(bytes(frame))
    assert reader.get_frame() is None
    assert reader.crc_errors == 1


def test_garbage_before_between_and_after_frames():
    reader = SmlStreamReader()
    reader.add(b"\x00\x1b\x1b\x1b\x01" + _frame(1) + b"noise\x1b\x1b\x1b" + _frame(2) + b"\xff" * 3)
    assert _values(reader) == [1, 2]
    assert reader.crc_errors == 0
    assert reader.dropped_bytes + reader.buffered == 5 + 8 + 3


def test_byte_by_byte_feeding():
    stream = _frame(1) + _frame(2, crc_variant=CRC_KERMIT_MSB_FIRST) + _frame(3)
    reader = SmlStreamReader()
    got = []
    for byte in stream:
        reader.add(bytes([byte]))
        got.extend(_values(reader))
    assert got == [1, 2, 3]
    assert (reader.dropped_bytes, reader.buffered) == (0, 0)


def test_truncated_frame_is_dropped_and_the_next_one_kept():
    first = _frame(1)
    reader = SmlStreamReader()
    reader.add(first[:50] + _frame(2))
    assert _values(reader) == [2]
    assert reader.truncated == 1
    assert reader.dropped_bytes == 50


@pytest.mark.parametrize("keep", [1, 2, 3, 4, 5, 6, 7])
def test_frame_cut_inside_its_end_sequence_then_a_good_one(keep):
    first = _frame(1)
    cut = first[: len(first) - 8 + keep]  # keeps `keep` bytes of 1b1b1b1b 1a pp c1 c2
    reader = SmlStreamReader()
    reader.add(cut)
    assert reader.get_frame() is None
    reader.add(_frame(2))
    assert _values(reader) == [2]
    assert reader.frames_ok == 1
    assert reader.crc_errors + reader.truncated + reader.malformed == 1
    assert reader.dropped_bytes == len(cut)


def test_payload_holding_a_start_sequence_decodes():
    value = sml_frames.START * 2 + b"x"
    reader = SmlStreamReader()
    reader.add(sml_frames.sml_frame([Entry("1-0:96.1.0*255", value)]))
    frame = reader.get_frame()
    assert frame is not None
    assert frame.entries[0].value == value
    assert (reader.truncated, reader.crc_errors) == (0, 0)


@pytest.mark.parametrize("run", [4, 5, 7, 8, 11])
@pytest.mark.parametrize("keep", range(1, 12))
@pytest.mark.parametrize("shift", range(4))
def test_frame_cut_inside_an_escaped_run_then_a_good_one(run, keep, shift):
    # A frame cut inside 1b1b1b1b 1b1b1b1b [1b...]: with the next start this reads as a run of
    # 0x1b and 01010101, which is also how payload 1b..1b 01010101 is sent. The next frame
    # must still come out, at once (not only when a third frame arrives).
    entries = [Entry("1-0:0.0.0*255", b"s" * (shift + 1)), Entry("1-0:96.1.0*255", b"\x1b" * run)]
    first = sml_frames.sml_frame(entries)
    doubled = first.index(sml_frames.ESCAPE * 2, 8)
    cut = first[: doubled + keep]
    reader = SmlStreamReader()
    reader.add(cut + _frame(2))
    assert _values(reader) == [2]
    reader.add(_frame(3))
    assert _values(reader) == [3]
    assert reader.crc_errors + reader.truncated + reader.malformed == 1
    assert reader.dropped_bytes == len(cut)


def test_unknown_escape_sequence_drops_the_frame():
    payload = sml_frames.messages(ENTRIES)
    bad = sml_frames.START + payload[:8] + sml_frames.ESCAPE + b"\x02\x02\x02\x02" + payload[8:]
    reader = SmlStreamReader()
    reader.add(bad + _frame(9))
    assert _values(reader) == [9]
    assert reader.malformed == 1


def test_padding_count_larger_than_the_frame_is_malformed():
    frame = sml_frames.START + sml_frames.ESCAPE + b"\x1a\x09"
    frame += sml_frames.crc_bytes(frame)
    reader = SmlStreamReader()
    reader.add(frame + _frame(3))
    assert _values(reader) == [3]
    assert reader.malformed == 1


def test_unaligned_end_mark_is_payload():
    # 1b1b1b1b 1a at an unaligned position is data (here inside an octet string).
    value = b"\x00\x1b\x1b\x1b\x1b\x1a\x00\x00"
    entries = [Entry("1-0:96.1.0*255", value), *ENTRIES]
    for shift in range(4):
        shifted = [Entry("1-0:0.0.0*255", b"x" * (shift + 1)), *entries]
        reader = SmlStreamReader()
        reader.add(sml_frames.sml_frame(shifted))
        frame = reader.get_frame()
        assert frame is not None, shift
        assert frame.entries[1].value == value


@pytest.mark.parametrize("run", range(1, 14))
@pytest.mark.parametrize("shift", range(4))
def test_escapes_inside_the_payload_at_every_alignment(run, shift):
    # Runs of 0x1b of every length, at every offset, also right before the end sequence.
    value = b"\x1b" * run
    entries = [Entry("1-0:0.0.0*255", b"a" * (shift + 1)), Entry("1-0:96.1.0*255", value)]
    frame_bytes = sml_frames.sml_frame(entries)
    reader = SmlStreamReader()
    reader.add(frame_bytes)
    frame = reader.get_frame()
    assert frame is not None
    assert frame.entries[1].value == value
    assert reader.dropped_bytes == 0

    # A payload that ends in 0x1b bytes with no padding before the end sequence.
    payload = b"\x42" * ((4 - shift) % 4) + value
    payload += b"\x1b" * (-len(payload) % 4)
    transport = SmlTransportReader()
    transport.add(sml_frames.transport_frame(payload))
    unwrapped = transport.next_frame()
    assert unwrapped is not None
    assert unwrapped.payload == payload


def test_four_padding_bytes_on_an_aligned_payload_are_accepted():
    # DZG meters do this; see sml/dzg_0282c0b0__smllib.bin
    payload = sml_frames.messages(ENTRIES)
    payload += bytes(-len(payload) % 4)
    frame = sml_frames.transport_frame(payload, padding=4)
    assert frame[-3] == 4
    reader = SmlStreamReader()
    reader.add(frame)
    assert [entry.value for entry in reader.get_frame().entries] == [123_456_789, -42]


def test_good_crc_but_undecodable_content_is_counted_and_skipped():
    undecodable = sml_frames.transport_frame(b"\x76\x05\x01\x02")
    reader = SmlStreamReader()
    reader.add(undecodable + _frame(4))
    assert _values(reader) == [4]
    assert reader.decode_errors == 1
    assert "past the end" in str(reader.last_decode_error)
    assert reader.dropped_bytes == len(undecodable)


# --- bounded buffer --------------------------------------------------------------------------


def test_garbage_never_grows_the_buffer():
    reader = SmlStreamReader(max_buffer=4096)
    for _ in range(100):
        reader.add(os.urandom(1000).replace(b"\x1b", b"\x00"))
        assert reader.get_frame() is None
        assert reader.buffered <= 7
    reader.add(_frame(8))
    assert _values(reader) == [8]


def test_endless_frame_overflows_and_the_reader_recovers():
    reader = SmlStreamReader(max_buffer=4096)
    reader.add(sml_frames.START)
    for _ in range(10):
        reader.add(b"\x42" * 1000)
        assert reader.get_frame() is None
        assert reader.buffered <= 4096
    assert reader.overflows >= 1
    reader.add(_frame(5))
    assert _values(reader) == [5]


def test_overflow_keeps_the_newest_frame_start():
    reader = SmlStreamReader(max_buffer=1024)
    frame = _frame(6)
    reader.add(b"\x42" * 1000)
    reader.add(frame)  # over the limit: the garbage goes, the frame stays
    assert reader.overflows == 1
    assert _values(reader) == [6]
    assert reader.dropped_bytes == 1000


def test_default_buffer_limit_is_64_kib():
    reader = SmlStreamReader()
    reader.add(sml_frames.START + b"\x42" * 70_000)
    assert reader.buffered <= 64 * 1024
    assert reader.overflows == 1
