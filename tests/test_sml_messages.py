"""SML message decoding: TL fields of every width, message types, values, and clear errors."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols import sml_messages as messages_module
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
            "not a list of 6",
        ),
        (b"\x76\x01\x01\x01\x72\x63\x02\x01\x72\x01\x01\x63\x00\x00\x00", "not a list of 1"),
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
        (enc.sml_list(*[enc.ABSENT] * 6), "not a list of 7"),
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


# --- the fast paths agree with the general decoder --------------------------------------------
# _list_entries() and _envelope() read the usual encodings inline for speed and hand everything
# else to _any_list_entry() / _any_envelope(). Whatever the bytes, both must give the same
# result, or both a ProtocolError.


def _fast_list_entry(buf: bytes, pos: int) -> tuple[object, int]:
    """One entry through the fast loop (which hands unusual ones to _any_list_entry itself)."""
    (entry,), end = messages_module._list_entries(buf, pos, 1)
    return entry, end


def _general_list_entries(buf: bytes, pos: int, count: int) -> tuple[list[object], int]:
    entries = []
    for _ in range(count):
        entry, pos = messages_module._any_list_entry(buf, pos)
        entries.append(entry)
    return entries, pos


def _two_byte_tl(kind: int, length: int, data: bytes) -> bytes:
    """A two-byte TL announcing ``length`` (TL bytes included) before ``data``: legal where
    one byte would do when it fits, wrong when it does not."""
    return bytes([0x80 | kind | length >> 4 & 0x0F, length & 0x0F]) + data


def _integers(min_width: int = 1, max_width: int = 9, *, signed: bool) -> st.SearchStrategy:
    """Integers with a one-byte TL from random bytes (so high bits are set as often as not)."""
    encode = enc.signed if signed else enc.unsigned
    return st.builds(
        lambda raw: encode(int.from_bytes(raw, signed=signed), len(raw)),
        st.binary(min_size=min_width, max_size=max_width),
    )


def _time_choice(kind: int, seconds: bytes) -> bytes:
    return enc.sml_list(enc.unsigned(kind, 1), enc.unsigned(int.from_bytes(seconds), len(seconds)))


def _local_time(seconds: bytes, local: bytes, season: bytes) -> bytes:
    """SML_Time choice 3: [3, [seconds, local offset, season offset]], each part any field."""
    return enc.sml_list(enc.unsigned(3, 1), enc.sml_list(seconds, local, season))


_TYPES = st.sampled_from([0x00, 0x40, 0x50, 0x60, 0x70])
_OFFSETS = st.builds(lambda minutes: enc.signed(minutes, 2), st.integers(-(2**15), 2**15 - 1))
_SECONDS = st.binary(min_size=1, max_size=5)
# One-byte TLs that announce fewer bytes than themselves, and the end-of-message byte.
_DEGENERATE = st.sampled_from([b"\x00", b"\x40", b"\x41", b"\x50", b"\x51", b"\x60", b"\x61"])
# Every encoding a field may come in, right or wrong for its place.
_ANY_FIELD = st.one_of(
    st.just(enc.ABSENT),
    _integers(signed=False),
    _integers(signed=True),
    st.builds(enc.octets, st.binary(max_size=70)),
    st.builds(enc.boolean, st.booleans()),
    st.builds(_two_byte_tl, _TYPES, st.integers(0, 40), st.binary(max_size=40)),
    st.builds(_time_choice, st.integers(0, 4), _SECONDS),
    _DEGENERATE,
    st.just(enc.sml_list(enc.unsigned(3, 1), enc.ABSENT)),
    st.binary(min_size=1, max_size=3),  # anything at all
)


def _usually(
    *usual: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes] = _ANY_FIELD
) -> st.SearchStrategy[bytes]:
    """Mostly (9 in 10) the encodings meters send in this place (the fast path), else ``odd``.

    (Not st.one_of(usual, odd): that flattens into a choice among all the branches.)"""
    return st.integers(0, 9).flatmap(lambda dice: odd if dice == 9 else st.one_of(*usual))


# A part of a list field: mostly an integer, sometimes anything.
_FIELD_PART = _usually(_integers(1, 4, signed=False), _integers(1, 2, signed=True))

_ENTRY_FIELDS = (
    _usually(st.builds(enc.octets, st.binary(min_size=1, max_size=16))),  # objName
    _usually(st.just(enc.ABSENT), _integers(signed=False), _integers(signed=True)),  # status
    _usually(  # valTime; the wrong choices 0, 3 and 4 too
        st.just(enc.ABSENT),
        st.builds(_time_choice, st.integers(0, 4), _SECONDS),
        st.builds(_local_time, _integers(signed=False), _OFFSETS, _OFFSETS),
        st.builds(_local_time, _FIELD_PART, _FIELD_PART, _FIELD_PART),
        _integers(signed=False),
    ),
    _usually(st.just(enc.ABSENT), _integers(1, 2, signed=False), _integers(signed=True)),  # unit
    _usually(st.just(enc.ABSENT), _integers(1, 2, signed=True), _integers(signed=False)),  # scaler
    _usually(  # value
        st.just(enc.ABSENT),
        _integers(signed=False),
        _integers(signed=True),
        st.builds(enc.octets, st.binary(max_size=70)),
        st.builds(_two_byte_tl, st.just(0x00), st.integers(0, 40), st.binary(max_size=40)),
        st.builds(enc.sml_list, _FIELD_PART, st.builds(_time_choice, st.integers(0, 4), _SECONDS)),
    ),
    _usually(st.just(enc.ABSENT), st.builds(enc.octets, st.binary(max_size=20))),  # signature
)


def _cut_or_extended(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short (1 in 4) or followed by a few more bytes."""
    if draw(st.integers(0, 3)) == 3:
        return data[: draw(st.integers(0, len(data)))]
    return data + draw(st.binary(max_size=4))


@st.composite
def _entries(draw: st.DrawFn) -> bytes:
    header = draw(_usually(st.just(b"\x77"), odd=st.sampled_from([b"\x76", b"\x78", b"\x80\x77"])))
    return _cut_or_extended(draw, header + b"".join(draw(field) for field in _ENTRY_FIELDS))


def _outcome(function: Callable[[bytes, int], object], buf: bytes) -> object:
    try:
        return function(buf, 0)
    except ProtocolError:
        return "ProtocolError"


@settings(max_examples=1500, deadline=None)
@given(_entries())
def test_fast_list_entry_agrees_with_the_general_decoder(data):
    assert _outcome(_fast_list_entry, data) == _outcome(
        messages_module._any_list_entry, data
    )


@settings(max_examples=500, deadline=None)
@given(st.lists(_entries(), min_size=1, max_size=5))
def test_fast_list_entries_agree_over_several_entries(entries):
    # After an entry that went the general way, the loop must go on where that one ended.
    data = b"".join(entries)

    def fast(buf: bytes, pos: int) -> object:
        return messages_module._list_entries(buf, pos, len(entries))

    def general(buf: bytes, pos: int) -> object:
        return _general_list_entries(buf, pos, len(entries))

    assert _outcome(fast, data) == _outcome(general, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_fast_list_entry_agrees_on_random_bytes(data):
    data = b"\x77" + data
    assert _outcome(_fast_list_entry, data) == _outcome(
        messages_module._any_list_entry, data
    )


_ENVELOPE_FIELDS = (
    _usually(st.builds(enc.octets, st.binary(min_size=1, max_size=16))),  # transactionId
    _usually(st.just(enc.ABSENT), _integers(1, 1, signed=False)),  # groupNo
    _usually(st.just(enc.ABSENT), _integers(1, 1, signed=False)),  # abortOnError
    _usually(st.just(b"\x72")),  # the body: a list of 2
    _usually(_integers(1, 4, signed=False)),  # the message type
)


@st.composite
def _envelopes(draw: st.DrawFn) -> bytes:
    fields = b"".join(draw(field) for field in _ENVELOPE_FIELDS)
    header = draw(_usually(st.just(b"\x76"), odd=st.sampled_from([b"\x77", b"\x80\x76"])))
    return _cut_or_extended(draw, header + fields)


@settings(max_examples=1000, deadline=None)
@given(_envelopes())
def test_fast_envelope_agrees_with_the_general_decoder(data):
    assert _outcome(messages_module._envelope, data) == _outcome(
        messages_module._any_envelope, data
    )


def test_usual_entries_take_the_fast_path():
    # Not a speed test: shows that the comparison above exercises the fast path at all.
    entry = enc.list_entry(Entry("1-0:1.8.0*255", 12345, unit=30, scaler=-1, status=0x182))
    reached = []

    def spy(buf: bytes, pos: int) -> object:
        reached.append(pos)
        return general(buf, pos)

    general = messages_module._any_list_entry
    messages_module._any_list_entry = spy
    try:
        _fast_list_entry(entry, 0)
        _fast_list_entry(enc.list_entry(Entry("1-0:96.1.0*255", b"x" * 48)), 0)
    finally:
        messages_module._any_list_entry = general
    assert reached == []


# Each field of an entry in its usual encodings (all of them set, so each takes a fast branch).
_USUAL_ENTRIES = (
    (
        enc.octets(bytes.fromhex("0100010800ff")),
        enc.unsigned(0x1C0104, 3),
        enc.sml_time_sec_index(0x0A575853),
        enc.unsigned(30, 1),
        enc.signed(-1, 1),
        enc.unsigned(0x225EF1CE, 4),
        enc.ABSENT,
    ),
    (
        enc.octets(bytes.fromhex("8100600800ff")),
        enc.unsigned(8, 1),
        _local_time(enc.unsigned(0x671B6322, 4), enc.signed(60, 2), enc.signed(60, 2)),
        enc.unsigned(30, 1),
        enc.signed(-1, 1),
        enc.sml_list(enc.unsigned(1, 1), enc.sml_time_sec_index(1982288)),
        enc.ABSENT,
    ),
)
# What may follow an odd type-length byte: its data, or more fields.
_FOLLOWERS = (
    bytes(16),
    b"\x01" * 16,
    bytes(range(1, 17)),
    b"\x62\x01\x62\x05" + b"\x01" * 12,
    b"\x83\x01" + b"\xff" * 14,
    b"\xff\x80" + b"\x01" * 14,  # sign bits set, then absent fields
)


@pytest.mark.parametrize("usual", _USUAL_ENTRIES)
def test_fast_list_entry_agrees_for_every_type_length_byte_in_every_field(usual):
    # Deterministic companion of the property above: every first byte in every place, and
    # every byte inside the valTime and the list value.
    variants = []
    for index in range(len(usual)):
        for first in range(256):
            fields = list(usual)
            for follower in _FOLLOWERS:
                fields[index] = bytes([first]) + follower
                variants.append(b"\x77" + b"".join(fields))
            inner = usual[index]
            if inner[0] & 0xF0 == 0x70:
                for where in range(1, len(inner)):
                    fields[index] = inner[:where] + bytes([first]) + inner[where + 1 :]
                    variants.append(b"\x77" + b"".join(fields))
    for data in variants:
        fast = _outcome(_fast_list_entry, data)
        assert fast == _outcome(messages_module._any_list_entry, data), data.hex()


@pytest.mark.parametrize("usual", _USUAL_ENTRIES)
def test_fast_list_entry_agrees_when_cut_anywhere(usual):
    for value in (enc.unsigned(7, 4), enc.signed(-7, 2), enc.octets(b"k" * 48), usual[5]):
        data = b"\x77" + b"".join([*usual[:5], value, enc.ABSENT])
        for cut in range(len(data) + 1):
            fast = _outcome(_fast_list_entry, data[:cut])
            assert fast == _outcome(messages_module._any_list_entry, data[:cut]), cut


def test_fast_envelope_agrees_for_every_type_length_byte_in_every_field():
    usual = (enc.octets(b"\x00\x01\x02\x03"), enc.unsigned(0, 1), enc.unsigned(0, 1), b"\x72")
    usual_tag = enc.unsigned(0x0701, 2)
    for index in range(len(usual) + 1):
        for first in range(256):
            for follower in _FOLLOWERS:
                fields = [*usual, usual_tag]
                fields[index] = bytes([first]) + follower
                data = b"\x76" + b"".join(fields)
                fast = _outcome(messages_module._envelope, data)
                assert fast == _outcome(messages_module._any_envelope, data), data.hex()


@pytest.mark.parametrize("depth", range(12, 19))
def test_fast_list_entry_agrees_on_deeply_nested_list_values(depth):
    value = enc.ABSENT
    for _ in range(depth):
        value = enc.sml_list(enc.unsigned(1, 1), value)
    data = b"\x77" + b"".join([*_USUAL_ENTRIES[0][:5], value, enc.ABSENT])
    fast = _outcome(_fast_list_entry, data)
    assert fast == _outcome(messages_module._any_list_entry, data)
    assert (fast == "ProtocolError") == (depth > 15)  # _MAX_DEPTH, counted from the entry
