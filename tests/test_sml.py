"""Real SML captures decode to the values in expected.json, and frames become Readouts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from iskra_me162.errors import ChecksumError
from iskra_me162.protocols.sml import (
    SmlFrame,
    SmlGetListRes,
    SmlPublicCloseRes,
    SmlPublicOpenRes,
    SmlStreamReader,
    decode_bare_messages,
    decode_messages,
    frame_to_readout,
)
from iskra_me162.protocols.sml_crc import CRC_KERMIT_MSB_FIRST, CRC_X25_LSB_FIRST
from tests import sml_frames
from tests.sml_frames import UNIT_W, UNIT_WH, Entry
from tests.testdata import captures, expected, require_testdata

SML_CAPTURES = captures("sml/")
FRAMED = [name for name in SML_CAPTURES if "_msgonly_" not in name]
BARE = [name for name in SML_CAPTURES if "_msgonly_" in name]
BAD_FRAME_CRC = "sml/emh_issue912__tibberlink.bin"
WALL = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _bytes(name: str) -> bytes:
    return (require_testdata() / name).read_bytes()


def _stream_frames(data: bytes) -> tuple[list[SmlFrame], SmlStreamReader]:
    reader = SmlStreamReader()
    reader.add(data)
    return list(reader.frames()), reader


def _frame_of(name: str) -> SmlFrame:
    """The frame of a capture the way the daemon would get it (bare files: bare API)."""
    data = _bytes(name)
    if "_msgonly_" in name:
        return decode_bare_messages(data)
    frames, reader = _stream_frames(data)
    assert len(frames) == 1, f"{name}: {reader.crc_errors} CRC errors"
    return frames[0]


def _payload_of_frame_file(data: bytes) -> bytes:
    """The messages inside a single-frame capture, cut out by hand (for the bad-CRC file)."""
    padding = data[-3]
    assert data[:8] == sml_frames.START and data[-8:-4] == sml_frames.ESCAPE
    assert sml_frames.ESCAPE not in data[8:-8]  # no escapes to undo in this capture
    return data[8 : len(data) - 8 - padding]


def _exact(spec: dict) -> Decimal:
    return Decimal(spec["raw"]).scaleb(spec["scaler"])


def test_every_sml_capture_is_listed():
    require_testdata()
    on_disk = {f"sml/{path.name}" for path in (require_testdata() / "sml").glob("*.bin")}
    assert on_disk == set(SML_CAPTURES)
    assert BAD_FRAME_CRC in FRAMED


@pytest.mark.parametrize("name", [name for name in FRAMED if name != BAD_FRAME_CRC])
def test_framed_capture_gives_one_frame_with_the_expected_crc(name):
    checks = expected()[name]["checks"]
    frames, reader = _stream_frames(_bytes(name))
    assert len(frames) == 1
    assert (reader.frames_ok, reader.crc_errors, reader.dropped_bytes) == (1, 0, 0)
    variant = (
        CRC_KERMIT_MSB_FIRST if checks["crc_algorithm"] == "CRC-16/KERMIT" else (CRC_X25_LSB_FIRST)
    )
    assert frames[0].crc_variant == variant
    assert frames[0].raw == _bytes(name)


@pytest.mark.parametrize("name", [name for name in SML_CAPTURES if name != BAD_FRAME_CRC])
def test_capture_values_match_expected(name):
    spec = expected()[name]
    readout = frame_to_readout(_frame_of(name), WALL, 12.5)
    by_code = {str(reading.code): reading for reading in readout.readings}
    assert spec["obis"], "every SML capture has numeric values"
    for obis, want in spec["obis"].items():
        reading = by_code[obis]
        assert reading.value == _exact(want), obis
        assert reading.value == Decimal(str(want["value"])), obis
        assert reading.unit == want["unit"], obis
    for obis, text in spec.get("text", {}).items():
        assert by_code[obis].raw == text, obis


@pytest.mark.parametrize("name", SML_CAPTURES)
def test_capture_server_id_and_message_crcs_match_expected(name):
    spec = expected()[name]
    frame = (
        _frame_of(name)
        if name != BAD_FRAME_CRC
        else decode_bare_messages(_payload_of_frame_file(_bytes(name)))
    )
    assert frame.server_id is not None
    assert frame.server_id.hex() == spec["server_id"]
    assert [message.crc_ok for message in frame.messages] == spec["checks"]["message_crc_valid"]
    assert [type(message.body) for message in frame.messages] == [
        SmlPublicOpenRes,
        SmlGetListRes,
        SmlPublicCloseRes,
    ]


def test_frame_with_bad_frame_crc_yields_nothing_from_the_stream():
    frames, reader = _stream_frames(_bytes(BAD_FRAME_CRC))
    assert frames == []
    assert reader.crc_errors == 1
    assert reader.frames_ok == 0
    assert reader.dropped_bytes + reader.buffered == len(_bytes(BAD_FRAME_CRC))


def test_bad_frame_crc_capture_still_decodes_through_the_bare_api():
    # Only to show the decoder copes with its content: the stream reader never uses it.
    spec = expected()[BAD_FRAME_CRC]
    frame = decode_bare_messages(_payload_of_frame_file(_bytes(BAD_FRAME_CRC)))
    readout = frame_to_readout(frame, WALL, 0.0)
    for obis, want in spec["obis"].items():
        assert next(r for r in readout.readings if str(r.code) == obis).value == _exact(want)


def test_strict_bare_decoding_refuses_wrong_message_crcs():
    data = _bytes("sml/emh_04c56c97db_msgonly__smllib.bin")  # messages 1-2 have wrong CRCs
    with pytest.raises(ChecksumError, match="message 1"):
        decode_messages(data, strict=True)
    assert len(decode_messages(data)) == 3
    good = _bytes("sml/iskra_04812d55_msgonly__smllib.bin")
    assert len(decode_messages(good, strict=True)) == 3


def test_all_captures_back_to_back_in_one_stream_in_small_chunks():
    names = [name for name in FRAMED if name != BAD_FRAME_CRC]
    stream = b"\x00garbage" + b"".join(_bytes(name) + b"\xff\x1b" for name in names)
    reader = SmlStreamReader()
    frames = []
    for index in range(0, len(stream), 7):
        reader.add(stream[index : index + 7])
        frames.extend(reader.frames())
    assert [frame.raw for frame in frames] == [_bytes(name) for name in names]
    assert reader.crc_errors == 0
    # the 2 bytes after the last frame wait in the buffer: they might begin a start sequence
    assert (reader.dropped_bytes, reader.buffered) == (8 + 2 * (len(names) - 1), 2)


# --- conversion to Readout -------------------------------------------------------------------


def test_readout_identity_and_registers_from_a_capture():
    frame = _frame_of("sml/emh_ehz-41f045__smartmeter-obis.bin")
    readout = frame_to_readout(frame, WALL, 42.0)
    assert readout.identity.manufacturer == "EMH"
    assert readout.identity.model == ""
    assert readout.identity.serial == "0901454d48000041f045"
    assert readout.identity.meter_id == "0901454d48000041f045"
    assert readout.wall_time == WALL and readout.monotonic == 42.0
    assert readout.get("1.8.0").value == Decimal("15338555.7")
    assert readout.energy_wh("1.8.0") == Decimal("15338555.7")
    assert readout.power_w("16.7.0") == Decimal("563.5")
    assert readout.get("2.8.0") is None


@pytest.mark.parametrize(
    ("name", "manufacturer"),
    [
        ("sml/emh_ehz-02280816__vzlogger.bin", "EMH"),  # 129-129:199.130.3
        ("sml/dzg_0282c0b0__smllib.bin", "DZG"),  # 1-0:96.50.1*1
        ("sml/holley_hly_0159bb_kermit__smllib.bin", "HLY"),
        ("sml/emh_cacf7e_issue26__smllib.bin", "EMH"),  # no flag entry: from the server id
    ],
)
def test_manufacturer_from_flag_entry_or_server_id(name, manufacturer):
    assert frame_to_readout(_frame_of(name), WALL, 0.0).identity.manufacturer == manufacturer


def test_manufacturer_unknown_when_neither_flag_nor_server_id_says():
    frame = _decode_generated(
        [Entry("1-0:1.8.0*255", 5, unit=UNIT_WH)], server_id=bytes.fromhex("0102030405")
    )
    identity = frame_to_readout(frame, WALL, 0.0).identity
    assert (identity.manufacturer, identity.serial) == ("", "0102030405")


def _decode_generated(entries: list[Entry], **kwargs: object) -> SmlFrame:
    frames, reader = _stream_frames(sml_frames.sml_frame(entries, **kwargs))
    assert len(frames) == 1, reader.last_decode_error
    return frames[0]


def test_readings_of_generated_frame_text_and_numbers():
    frame = _decode_generated(
        [
            Entry("1-0:96.50.1*1", b"ISK"),
            Entry("1-0:96.1.0*255", bytes.fromhex("0a0149534b0005020de2")),
            Entry("1-0:1.8.0*255", 2_539_177, unit=UNIT_WH, scaler=-1, width=5),
            Entry("1-0:2.8.0*255", 7, unit=UNIT_WH, scaler=3),
            Entry("1-0:16.7.0*255", -1557, unit=UNIT_W, scaler=0, width=3, signed=True),
            Entry("1-0:96.5.0*255", 1_868_036),  # status word: a number without unit
            Entry("1-0:0.0.1*255", True),
            Entry("1-0:0.0.2*255", None),
        ]
    )
    readout = frame_to_readout(frame, WALL, 0.0)
    rows = {str(r.code): (r.value, r.unit, r.raw) for r in readout.readings}
    assert rows == {
        "1-0:96.50.1*1": (None, None, "ISK"),
        "1-0:96.1.0*255": (None, None, "0a0149534b0005020de2"),
        "1-0:1.8.0*255": (Decimal("253917.7"), "Wh", "253917.7"),
        "1-0:2.8.0*255": (Decimal(7000), "Wh", "7000"),
        "1-0:16.7.0*255": (Decimal(-1557), "W", "-1557"),
        "1-0:96.5.0*255": (Decimal(1868036), None, "1868036"),
        "1-0:0.0.1*255": (None, None, "true"),
        "1-0:0.0.2*255": (None, None, ""),
    }
    assert readout.identity.manufacturer == "ISK"
    assert readout.energy_wh("1.8.0") == Decimal("253917.7")
    assert readout.energy_wh("2.8.0") == Decimal(7000)


def test_entry_with_an_objname_that_is_not_obis_is_left_out():
    odd = sml_frames.sml_list(
        sml_frames.octets(b"\x01\x00\x01"),
        *[sml_frames.ABSENT] * 4,
        sml_frames.unsigned(5),
        sml_frames.ABSENT,
    )
    body = sml_frames.sml_list(
        sml_frames.ABSENT,
        sml_frames.octets(b"\x01\x02"),
        sml_frames.ABSENT,
        sml_frames.ABSENT,
        sml_frames.sml_list(odd, sml_frames.list_entry(Entry("1-0:2.8.0*255", 9, unit=30))),
        sml_frames.ABSENT,
        sml_frames.ABSENT,
    )
    payload = sml_frames.message(0x0701, body, transaction_id=b"\x01")
    frame = decode_bare_messages(payload)
    assert [entry.obj_name for entry in frame.entries] == [
        b"\x01\x00\x01",
        b"\x01\x00\x02\x08\x00\xff",
    ]
    readout = frame_to_readout(frame, WALL, 0.0)
    assert [str(r.code) for r in readout.readings] == ["1-0:2.8.0*255"]


def test_frame_without_get_list_has_no_readings():
    payload = sml_frames.message(
        0x0101,
        sml_frames.public_open_res(b"\x0a\x01EMH\x00\x00\x00\x00\x01"),
        transaction_id=b"\x07",
    )
    frame = decode_bare_messages(payload)
    assert frame.entries == ()
    assert frame.server_id == b"\x0a\x01EMH\x00\x00\x00\x00\x01"
    readout = frame_to_readout(frame, WALL, 0.0)
    assert readout.readings == ()
    assert readout.identity.manufacturer == "EMH"


def test_every_objname_becomes_its_own_obis_code():
    # Hundreds of different codes in one frame: each reading carries the groups of its entry.
    entries = [
        Entry(bytes((1, index % 7, index // 256, index % 256, 0, 255)), index, unit=UNIT_WH)
        for index in range(600)
    ]
    readout = frame_to_readout(decode_bare_messages(sml_frames.messages(entries)), WALL, 0.0)
    for entry, reading in zip(entries, readout.readings, strict=True):
        a, b, c, d, e, f = entry.obis  # type: ignore[misc]
        assert (reading.code.a, reading.code.b, reading.code.c) == (a, b, c)
        assert (reading.code.d, reading.code.e, reading.code.f) == (d, e, f)
        assert str(reading.code) == f"{a}-{b}:{c}.{d}.{e}*{f}"


def test_entries_of_several_get_list_responses_in_order():
    first = sml_frames.get_list_res(b"\x0a\x01AAA\x00\x00\x00\x00\x01", [Entry("1-0:1.8.0*255", 1)])
    second = sml_frames.get_list_res(
        b"\x0a\x01BBB\x00\x00\x00\x00\x02",
        [Entry("1-0:2.8.0*255", 2), Entry("1-0:16.7.0*255", 3)],
    )
    payload = b"".join(
        sml_frames.message(0x0701, body, transaction_id=bytes([number]))
        for number, body in enumerate((first, second))
    )
    frame = decode_bare_messages(payload)
    assert [entry.value for entry in frame.entries] == [1, 2, 3]
    assert frame.server_id == b"\x0a\x01AAA\x00\x00\x00\x00\x01"
    readout = frame_to_readout(frame, WALL, 0.0)
    assert [str(reading.code) for reading in readout.readings] == [
        "1-0:1.8.0*255",
        "1-0:2.8.0*255",
        "1-0:16.7.0*255",
    ]


# --- DZG DVS74: 16.7.0 sent unsigned in a signed field ----------------------------------------


def _dzg_server_id(serial: int, flag: bytes = b"DZG") -> bytes:
    """A DIN 43863-5 server id as DZG meters send it: 0a 01 'DZG', the serial in 5 bytes."""
    return b"\x0a\x01" + flag + serial.to_bytes(5, "big")


def _dzg_frame(server_id: bytes, power: int, width: int) -> bytes:
    """A frame shaped like a DZG DVS74's (the capture dzg_0282c0b0__smllib.bin plus the power
    entry of these meters): 16.7.0 in W with scaler -2 as a signed integer of ``width`` bytes."""
    return sml_frames.sml_frame(
        [
            Entry("1-0:96.50.1*1", b"DZG"),
            Entry("1-0:96.1.0*255", server_id),
            Entry("1-0:1.8.0*255", 13391, unit=UNIT_WH, scaler=3, status=0x1C0104, val_time=7),
            Entry("1-0:2.8.0*255", 0, unit=UNIT_WH, scaler=3, val_time=7),
            Entry("1-0:16.7.0*255", power, unit=UNIT_W, scaler=-2, signed=True, width=width),
        ],
        server_id=server_id,
    )


def _power_of(data: bytes) -> Decimal:
    (frame,), _ = _stream_frames(data)
    readout = frame_to_readout(frame, WALL, 0.0)
    power = readout.get("16.7.0")
    assert power is not None and power.unit == "W"
    assert readout.get("1.8.0").value == Decimal(13391000)  # the other registers untouched
    return power.value


# +356.00 W is 35600 = 0x8b10; as Integer16 that reads -29936, i.e. -299.36 W.
WRONG_SIGN_356_W = 35600 - 65536


@pytest.mark.parametrize("serial", [42_000_000, 42_123_440, 48_999_999, 55_000_000, 58_999_999])
def test_faulty_dzg_dvs74_power_is_read_as_unsigned(serial):
    # 42 123 440 (0x0282c0b0) is the serial of the DZG capture in the test data.
    assert _power_of(_dzg_frame(_dzg_server_id(serial), WRONG_SIGN_356_W, 2)) == Decimal("356.00")
    # One byte the same way: 200 (2.00 W) sent as Integer8 0xc8 = -56.
    assert _power_of(_dzg_frame(_dzg_server_id(serial), 200 - 256, 1)) == Decimal("2.00")


def test_faulty_dzg_dvs74_keeps_negative_power_sent_in_four_bytes():
    # Feeding in is sent as a real Integer32: 55 ff fe 13 93 = -1260.61 W.
    data = _dzg_frame(_dzg_server_id(42_123_440), -126061, 4)
    assert bytes.fromhex("55fffe1393") in data
    assert _power_of(data) == Decimal("-1260.61")


@pytest.mark.parametrize(
    "server_id",
    [
        _dzg_server_id(41_999_999),  # below the DVS74 ranges (e.g. 40 05.. of libsml issue #132)
        _dzg_server_id(49_000_000),
        _dzg_server_id(54_999_999),
        _dzg_server_id(59_000_000),
        _dzg_server_id(60_123_456),  # DVS74 with the fixed firmware
        _dzg_server_id(42_123_440, flag=b"EMH"),  # the same number from another manufacturer
        _dzg_server_id(42_123_440)[:9],  # not a 10-byte server id
    ],
    ids=["41999999", "49000000", "54999999", "59000000", "60123456", "EMH", "9-bytes"],
)
def test_other_meters_keep_a_negative_power(server_id):
    assert _power_of(_dzg_frame(server_id, WRONG_SIGN_356_W, 2)) == Decimal("-299.36")
