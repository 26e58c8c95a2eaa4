"""SML message decoding: TL fields of every width, message types, values, and clear errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.sml import decode_bare_messages, decode_messages
from iskra_me162.protocols.sml_messages import (
    TIME_BARE,
    TIME_LOCAL_TIMESTAMP,
    TIME_SEC_INDEX,
    TIME_TIMESTAMP,
    SmlGetListRes,
    SmlTime,
    octets_text,
    unit_name,
)
from tests import sml_frames as enc
from tests.sml_frames import UNIT_WH, Entry


def _one_entry(entry: Entry):
    frame = decode_bare_messages(enc.messages([entry]))
    assert len(frame.entries) == 1
    return frame.entries[0]


def _get_list_message(*entries: bytes, crc_algorithm: str = "x25") -> bytes:
    body = enc.sml_list(
        enc.ABSENT,
        enc.octets(b"\x0a\x01ISK\x00\x00\x00\x00\x01"),
        enc.ABSENT,
        enc.ABSENT,
        enc.sml_list(*entries),
        enc.ABSENT,
        enc.ABSENT,
    )
    return enc.message(0x0701, body, transaction_id=b"\x11", crc_algorithm=crc_algorithm)


def _raw_entry(value: bytes, *, val_time: bytes = enc.ABSENT, scaler: bytes = enc.ABSENT) -> bytes:
    return enc.sml_list(
        enc.octets(bytes.fromhex("0100010800ff")),
        enc.ABSENT,
        val_time,
        enc.unsigned(UNIT_WH, 1),
        scaler,
        value,
        enc.ABSENT,
    )


# --- TL fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [*range(1, 20), 237, 252, 253, 254, 255, 256, 4092, 4093, 5000])
def test_octet_strings_of_any_length(length):
    # Lengths around 15/255/4095 switch to 2-, 3- and 4-byte TL fields (counted in the length).
    value = bytes(index % 251 for index in range(length))
    assert _one_entry(Entry("1-0:96.1.0*255", value)).value == value


def test_empty_octet_string_reads_as_absent():
    # Both are the byte 0x01 on the wire: SML cannot tell them apart.
    assert enc.octets(b"") == enc.ABSENT
    assert _one_entry(Entry("1-0:96.1.0*255", b"")).value is None


@pytest.mark.parametrize("count", [0, 1, 15, 16, 20, 255, 256, 300])
def test_value_lists_of_any_length(count):
    entries = [Entry(f"1-0:1.8.{index % 256}*{index // 256}", index) for index in range(count)]
    frame = decode_bare_messages(enc.messages(entries))
    assert [entry.value for entry in frame.entries] == list(range(count))


@pytest.mark.parametrize("width", range(1, 9))
def test_integers_of_every_width_and_sign(width):
    bits = 8 * width
    for value in (0, 1, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)), -1):
        entry = _one_entry(Entry("1-0:16.7.0*255", value, unit=27, width=width, signed=True))
        assert entry.value == value
    for value in (0, 1, 2**bits - 1, 2 ** (bits - 1)):
        entry = _one_entry(Entry("1-0:1.8.0*255", value, unit=30, width=width, signed=False))
        assert entry.value == value


def test_odd_width_unsigned_is_not_read_as_signed():
    # EFR sends 2.8.0 as a 3-byte unsigned 0x917463: a signed reading would be negative.
    entry = _one_entry(Entry("1-0:2.8.0*255", 0x917463, unit=30, scaler=-1, width=3))
    assert entry.scaled_value == Decimal("953251.5")


@pytest.mark.parametrize(
    ("value", "scaler", "want"),
    [
        (147967771, -1, "14796777.1"),
        (45009189911, -5, "450091.89911"),
        (2, 3, "2000"),
        (-1772, -1, "-177.2"),
        (0, -1, "0.0"),
        (2**63 - 1, -128, "9223372036854775807E-128"),
        (-(2**63), 127, str(-(2**63) * 10**127)),
        (5, None, "5"),
    ],
)
def test_scaled_values_are_exact(value, scaler, want):
    entry = _one_entry(Entry("1-0:1.8.0*255", value, unit=30, scaler=scaler, width=8, signed=True))
    assert entry.scaled_value == Decimal(want)
    assert entry.text == str(Decimal(want))


def test_booleans_and_absent_values():
    assert _one_entry(Entry("1-0:0.0.1*255", True)).value is True
    assert _one_entry(Entry("1-0:0.0.1*255", False)).text == "false"
    absent = _one_entry(Entry("1-0:0.0.1*255", None))
    assert absent.value is None and absent.scaled_value is None and absent.text == ""


def test_list_value_keeps_its_element_types():
    # Like EMH's 129-0:96.8.0*1: an SML_ListType (a time) where a value would be.
    value = enc.sml_list(enc.unsigned(1), enc.sml_list(enc.unsigned(1), enc.unsigned(1982288, 4)))
    frame = decode_bare_messages(_get_list_message(_raw_entry(value)))
    entry = frame.entries[0]
    assert entry.value == (("uint", 1), ("list", (("uint", 1), ("uint", 1982288))))
    assert entry.text == "[('uint', 1), ('list', [('uint', 1), ('uint', 1982288)])]"
    assert entry.scaled_value is None
    mixed = enc.sml_list(enc.signed(-3), enc.octets(b"\x01\x02"), enc.ABSENT, enc.boolean(True))
    entry = decode_bare_messages(_get_list_message(_raw_entry(mixed))).entries[0]
    assert entry.text == "[('int', -3), ('octets', '0102'), ('absent', None), ('bool', True)]"


_TIMES = [
        (enc.sml_time_sec_index(98733919), SmlTime(TIME_SEC_INDEX, 98733919)),
        (
            enc.sml_list(enc.unsigned(2), enc.unsigned(1729848098, 4)),
            SmlTime(TIME_TIMESTAMP, 1729848098),
        ),
        (
            enc.sml_list(
                enc.unsigned(3),
                enc.sml_list(enc.unsigned(1729848098, 4), enc.signed(60, 2), enc.signed(60, 2)),
            ),
            SmlTime(TIME_LOCAL_TIMESTAMP, 1729848098, 60, 60),
        ),
        (enc.unsigned(41985, 4), SmlTime(TIME_BARE, 41985)),
        (  # offsets as unsigned: not the usual encoding, still a time
            enc.sml_list(
                enc.unsigned(3),
                enc.sml_list(enc.unsigned(1729848098, 4), enc.unsigned(60, 2), enc.unsigned(0)),
            ),
            SmlTime(TIME_LOCAL_TIMESTAMP, 1729848098, 60, 0),
        ),
        (enc.signed(-5, 2), SmlTime(TIME_BARE, -5)),
]


@pytest.mark.parametrize(("encoded", "want"), _TIMES)
def test_value_times(encoded, want):
    entry = decode_bare_messages(_get_list_message(_raw_entry(enc.unsigned(1), val_time=encoded)))
    assert entry.entries[0].val_time == want


def _open_and_get_list(time: bytes) -> tuple[bytes, bytes]:
    """PublicOpen.Res with ``time`` as refTime, GetList.Res with it as actSensorTime."""
    server_id = enc.octets(b"\x0a\x01ISK")
    version = enc.unsigned(1, 1)
    open_body = enc.sml_list(enc.ABSENT, enc.ABSENT, enc.octets(b"\x01"), server_id, time, version)
    list_body = enc.sml_list(
        enc.ABSENT,
        enc.octets(b"\x0a\x01ISK"),
        enc.ABSENT,
        time,
        enc.sml_list(enc.list_entry(Entry("1-0:1.8.0*255", 5, unit=UNIT_WH))),
        enc.ABSENT,
        enc.ABSENT,
    )
    return (
        enc.message(0x0101, open_body, transaction_id=b"\x01"),
        enc.message(0x0701, list_body, transaction_id=b"\x02"),
    )


@pytest.mark.parametrize(("encoded", "want"), _TIMES)
def test_message_times(encoded, want):
    open_res, get_list = (m.body for m in decode_messages(b"".join(_open_and_get_list(encoded))))
    assert open_res.ref_time == want
    assert get_list.act_sensor_time == want


@pytest.mark.parametrize("encoded", [encoded for encoded, _ in _TIMES])
def test_message_times_cut_anywhere_are_protocol_errors(encoded):
    for message in _open_and_get_list(encoded):
        for cut in range(len(message)):
            with pytest.raises(ProtocolError):
                decode_messages(message[:cut])


def test_text_rendering_of_octet_strings():
    assert octets_text(b"EMH") == "EMH"
    assert octets_text(b"1.02.007") == "1.02.007"
    assert octets_text(b"\x42\xbd") == "42bd"
    assert octets_text(b"\x00\x00") == "0000"
    assert octets_text(b"") == ""


def test_unit_names():
    assert [unit_name(code) for code in (30, 27, 35, 33, 44, 8)] == [
        "Wh",
        "W",
        "V",
        "A",
        "Hz",
        "deg",
    ]
    assert [unit_name(code) for code in (32, 29, 28, 31)] == ["varh", "var", "VA", "VAh"]
    assert unit_name(None) is None and unit_name(0) is None and unit_name(255) is None
    assert unit_name(200) == "dlms-unit-200"


# --- message types ---------------------------------------------------------------------------


def test_other_message_types_are_skipped_cleanly():
    proc_parameter = enc.sml_list(  # GetProcParameter.Res: a tree that must be walked over
        enc.octets(b"\x01"),
        enc.sml_list(enc.octets(b"\x81\x81\xc7\x82\x03\xff")),
        enc.sml_list(
            enc.octets(b"x"), enc.sml_list(enc.unsigned(1), enc.octets(b"ISK")), enc.ABSENT
        ),
    )
    attention = enc.sml_list(
        enc.octets(b"\x01"), enc.octets(b"\x81\x81\xc7\xc7\xfe\x00"), enc.ABSENT, enc.ABSENT
    )
    payload = (
        enc.message(0x0501, proc_parameter, transaction_id=b"\x01")
        + enc.message(0xFF01, attention, transaction_id=b"\x02")
        + enc.messages([Entry("1-0:1.8.0*255", 77, unit=30)])
    )
    messages = decode_messages(payload)
    assert [(message.tag, message.body) for message in messages[:2]] == [
        (0x0501, None),
        (0xFF01, None),
    ]
    assert all(message.crc_ok for message in messages)
    assert isinstance(messages[3].body, SmlGetListRes)
    assert messages[3].body.entries[0].value == 77


def test_message_fields():
    message = decode_messages(
        enc.message(
            0x0201, enc.public_close_res(), transaction_id=b"\xab\xcd", group_no=2, abort_on_error=1
        )
    )[0]
    assert (message.transaction_id, message.group_no, message.abort_on_error) == (b"\xab\xcd", 2, 1)
    assert message.body.global_signature is None
    assert message.crc_ok


def test_message_crc_in_kermit_is_recognised_and_a_wrong_one_reported():
    assert decode_messages(_get_list_message(_raw_entry(enc.unsigned(1)), crc_algorithm="kermit"))[
        0
    ].crc_ok
    wrong = enc.message(0x0201, enc.public_close_res(), transaction_id=b"\x01", crc_override=0x1234)
    assert decode_messages(wrong)[0].crc_ok is False
    with pytest.raises(ChecksumError, match="CRC 1234 does not match"):
        decode_messages(wrong, strict=True)


def test_trailing_zero_padding_is_ignored():
    payload = enc.messages([Entry("1-0:1.8.0*255", 3, unit=30)])
    assert len(decode_messages(payload + bytes(3))) == 3


# --- errors ----------------------------------------------------------------------------------


def test_every_truncation_is_a_protocol_error():
    payload = _get_list_message(
        _raw_entry(enc.unsigned(123456, 4), val_time=enc.sml_time_sec_index(5))
    )
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError):
            decode_messages(payload[:cut])


def test_a_list_value_cut_anywhere_is_a_protocol_error():
    # Found by fuzz_sml: a list value that the data ends inside.
    value = enc.sml_list(enc.unsigned(1), enc.sml_list(enc.signed(-3), enc.octets(b"\x01\x02")))
    payload = _get_list_message(_raw_entry(value))
    assert decode_bare_messages(payload).entries[0].value is not None
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError):
            decode_messages(payload[:cut])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "no SML message"),
        (b"\x62\x01", "an SML message expected at byte 0"),
        (b"\x75\x01\x01\x01\x01\x01", "has 5 fields, expected 6"),
        (b"\x76\x01\x01\x01\x73\x01\x01\x01", "has 3 fields, expected 2"),
        (b"\x76\x01\x01\x01\x72\x01\x01\x01\x01", "message type at byte 4 is not an integer"),
        (b"\x76\x01\x01\x01\x72\x62\x05\x71\x01\x63\x00\x00\x01", "end of SML message expected"),
        (b"\x76\x01\x01\x01\x72\x62\x05\x01\x01\x00", "message CRC at byte 8 is not an integer"),
        (b"\x76\x01\x01\x01\x72\x62\x05\x00", "end of message inside the body"),
        (b"\x76\x01\x01\x01\x72\x62\x05" + b"\x71" * 40 + b"\x01", "nested deeper"),
        (
            b"\x76\x01\x01\x01\x72\x62\x05\x32\xaa\x63\x00\x00\x00",
            "unknown SML type-length byte 0x32",
        ),
        (b"\x76\x01\x01\x01\x72\x62\x05\x01\x61\x00", "shorter than its type-length bytes"),
        (b"\x76\x01\x01\x01\x72\x62\x05\x01" + b"\x8f" * 9 + b"\x00", "too long"),
        (
            b"\x76\x01\x01\x01\x72\x62\x05\x01\x63\x00\x00\x00\x42",
            "an SML message expected at byte 12",
        ),
        (
            b"\x76\x01\x01\x01\x72\x63\x01\x01\x75\x01\x01\x01\x01\x01\x63\x00\x00\x00",
            "PublicOpen.Res at byte 8 has 5 fields, expected 6",
        ),
        (
            b"\x76\x01\x01\x01\x72\x63\x02\x01\x72\x01\x01\x63\x00\x00\x00",
            "PublicClose.Res at byte 8 has 2 fields, expected 1",
        ),
        (
            b"\x76\x62\x01\x01\x01\x72\x63\x02\x01\x71\x01\x63\x00\x00\x00",
            "transactionId must be an octet",
        ),
    ],
)
def test_malformed_messages_are_protocol_errors(payload, message):
    with pytest.raises(ProtocolError, match=message):
        decode_messages(payload)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (enc.sml_list(*[enc.ABSENT] * 6), "SML_ListEntry at byte 27 has 6 fields, expected 7"),
        (enc.sml_list(enc.unsigned(1), *[enc.ABSENT] * 6), "objName .* not an octet string"),
        (_raw_entry(enc.unsigned(1), scaler=enc.octets(b"\x01")), "scaler .* not an integer"),
        (
            _raw_entry(enc.unsigned(1), val_time=enc.sml_list(enc.unsigned(9), enc.unsigned(1))),
            "not an SML_Time",
        ),
        (_raw_entry(enc.unsigned(1), val_time=enc.octets(b"\x01\x02")), "not an SML_Time"),
        (_raw_entry(b"\x00"), "end of message inside the list entry"),
    ],
)
def test_malformed_list_entries_are_protocol_errors(entry, message):
    with pytest.raises(ProtocolError, match=message):
        decode_messages(_get_list_message(entry))


@pytest.mark.parametrize("depth", [1, 2, 8, 20, 40])
def test_nested_list_values_decode_until_the_depth_limit(depth):
    # Recursion stays bounded on hostile input; real list values nest two deep.
    value = enc.ABSENT
    for _ in range(depth):
        value = enc.sml_list(enc.unsigned(1, 1), value)
    payload = _get_list_message(_raw_entry(value))
    if depth > 10:
        with pytest.raises(ProtocolError, match="nested deeper"):
            decode_messages(payload)
        return
    decoded = decode_bare_messages(payload).entries[0].value
    for _ in range(depth):
        assert decoded[0] == ("uint", 1)
        decoded = decoded[1][1]
    assert decoded is None
