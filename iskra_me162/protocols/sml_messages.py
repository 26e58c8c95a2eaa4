"""SML 1.04 messages: type-length fields, PublicOpen/GetList/PublicClose responses, list entries.

Input is the bytes *inside* a transport frame (or a file of bare messages): a sequence of
``SML_Message`` lists. :func:`decode_messages` returns them as frozen dataclasses; message types
other than PublicOpen.Res (0x0101), PublicClose.Res (0x0201) and GetList.Res (0x0701) are
skipped structurally (their body is walked, not interpreted).

TL field (first byte ``e ttt llll``): ``ttt`` 000 octet string, 100 boolean, 101 signed and
110 unsigned integer (big-endian, any width: meters send 3-, 5- and 7-byte integers too), 111
list. ``e`` set means another TL byte follows, contributing four more low bits of the length.
For a list the length counts elements; for anything else it counts all bytes *including the TL
bytes*. 0x00 ends a message, 0x01 is an absent optional field.

Message CRCs are checked and reported (:attr:`SmlMessage.crc_ok`), never enforced: real meters
get them wrong while the frame CRC is right (eBZ DD3, EMH with masked ids), so inside a frame
the transport CRC is the authoritative check. Bare messages carry no frame CRC; whoever takes
them from an untrusted channel decides with ``strict=True`` or by reading ``crc_ok``.

Speed: the decoder walks one ``bytes`` object with integer indexes, builds only the values the
caller gets, and never makes a Python object per input byte.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal

from iskra_me162.dataclass_init import check_init_matches_fields
from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.sml_crc import bit_reversed, crc_matches_any_reversed

MSG_PUBLIC_OPEN_RES = 0x0101
MSG_PUBLIC_CLOSE_RES = 0x0201
MSG_GET_LIST_RES = 0x0701

# SML_Time choices.
TIME_SEC_INDEX = 1
TIME_TIMESTAMP = 2
TIME_LOCAL_TIMESTAMP = 3
TIME_BARE = 0  # not the choice list of the standard but a bare integer (seen on real meters)

_MAX_DEPTH = 16  # SML nests 6 deep; deeper is garbage, and recursion must stay bounded
_MAX_TL_BYTES = 8
_END = object()  # marker returned for the end-of-message byte 0x00
_SIGNED_BYTE = (*range(128), *range(-128, 0))  # a byte read as a two's-complement Integer8
# Bound once: looking up int.from_bytes builds a new bound method every time (~50 ns).
_from_bytes = int.from_bytes

# Exact arithmetic for value * 10**scaler whatever the width of the integer.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)

# DLMS/COSEM unit codes (IEC 62056-62) that electricity meters use, as plain ASCII.
DLMS_UNITS: dict[int, str] = {
    1: "a",
    2: "mo",
    3: "wk",
    4: "d",
    5: "h",
    6: "min",
    7: "s",
    8: "deg",
    9: "degC",
    10: "currency",
    11: "m",
    12: "m/s",
    13: "m3",
    14: "m3",
    15: "m3/h",
    16: "m3/h",
    17: "m3/d",
    18: "m3/d",
    19: "l",
    20: "kg",
    21: "N",
    22: "Nm",
    23: "Pa",
    24: "bar",
    25: "J",
    26: "J/h",
    27: "W",
    28: "VA",
    29: "var",
    30: "Wh",
    31: "VAh",
    32: "varh",
    33: "A",
    34: "C",
    35: "V",
    36: "V/m",
    37: "F",
    38: "Ohm",
    44: "Hz",
    52: "K",
    56: "%",
    57: "Ah",
}
_NO_UNIT = (0, 255)  # 0 is not a unit; 255 is DLMS "count", i.e. a plain number


def scaled_decimal(value: int, scaler: int | None) -> Decimal:
    """``value * 10**scaler`` as an exact Decimal (``scaler`` None counts as 0)."""
    if not scaler:
        return Decimal(value)
    if scaler > 0:
        return Decimal(value * 10**scaler)
    return Decimal(value).scaleb(scaler, _EXACT)


def unit_name(code: int | None) -> str | None:
    """The unit string for a DLMS unit code; None for no unit, ``dlms-unit-N`` if unknown."""
    if code is None or code in _NO_UNIT:
        return None
    return DLMS_UNITS.get(code) or f"dlms-unit-{code}"


@dataclass(frozen=True)
class SmlTime:
    """An ``SML_Time``: ``kind`` is TIME_SEC_INDEX (seconds since some meter-internal start),
    TIME_TIMESTAMP (Unix time, UTC), TIME_LOCAL_TIMESTAMP (Unix time plus offsets in minutes)
    or TIME_BARE (the meter sent only an integer)."""

    kind: int
    seconds: int
    local_offset: int = 0
    season_offset: int = 0

    def __init__(
        self, kind: int, seconds: int, local_offset: int = 0, season_offset: int = 0
    ) -> None:
        # Up to one per register; see SmlListEntry.__init__.
        fields = self.__dict__
        fields["kind"] = kind
        fields["seconds"] = seconds
        fields["local_offset"] = local_offset
        fields["season_offset"] = season_offset


# A list value (SML_ListType, e.g. a time stamp as value) is kept with its element types:
# a tuple of (kind, value) with kind "uint", "int", "bool", "octets" (value as hex), "absent"
# (value None) or "list" (value a tuple of such pairs again).
TypedValue = tuple[tuple[str, object], ...]
EntryValue = int | bool | bytes | TypedValue | None


@dataclass(frozen=True)
class SmlListEntry:
    """One ``SML_ListEntry`` as sent. ``obj_name`` is the OBIS code (normally 6 bytes)."""

    obj_name: bytes
    status: int | None
    val_time: SmlTime | None
    unit: int | None
    scaler: int | None
    value: EntryValue
    value_signature: bytes | None = None

    def __init__(
        self,
        obj_name: bytes,
        status: int | None,
        val_time: SmlTime | None,
        unit: int | None,
        scaler: int | None,
        value: EntryValue,
        value_signature: bytes | None = None,
    ) -> None:
        # One per register of every frame: filling __dict__ costs half of what the generated
        # frozen __init__ (object.__setattr__ per field) does, 0.37 instead of 0.78 us. (So no
        # slots here.) check_init_matches_fields() keeps it in step with the fields. SmlTime and
        # SmlMessage (up to one per register, three per frame) do the same; the message bodies,
        # one per frame, keep the generated one.
        fields = self.__dict__
        fields["obj_name"] = obj_name
        fields["status"] = status
        fields["val_time"] = val_time
        fields["unit"] = unit
        fields["scaler"] = scaler
        fields["value"] = value
        fields["value_signature"] = value_signature

    @property
    def scaled_value(self) -> Decimal | None:
        """``value * 10**scaler`` exactly, for integer values; None for anything else."""
        value = self.value
        if type(value) is not int:  # bool is an int subclass: it is not a number here
            return None
        return scaled_decimal(value, self.scaler)

    @property
    def unit_name(self) -> str | None:
        return unit_name(self.unit)

    @property
    def text(self) -> str:
        """The value as readable text: printable ASCII octet strings as text (``EMH``,
        ``1.02.007``), other octet strings as lowercase hex (ids, keys), numbers in decimal
        with the scaler applied, list values as ``[('uint', 1), ('list', [...])]``."""
        value = self.value
        if type(value) is bytes:
            return octets_text(value)
        if type(value) is int:
            return str(self.scaled_value)
        if type(value) is bool:
            return "true" if value else "false"
        if type(value) is tuple:
            return _typed_text(value)
        return ""


check_init_matches_fields(SmlTime)
check_init_matches_fields(SmlListEntry)


@dataclass(frozen=True, slots=True)
class SmlPublicOpenRes:
    codepage: bytes | None
    client_id: bytes | None
    req_file_id: bytes | None
    server_id: bytes | None
    ref_time: SmlTime | None
    sml_version: int | None


@dataclass(frozen=True, slots=True)
class SmlPublicCloseRes:
    global_signature: bytes | None


@dataclass(frozen=True, slots=True)
class SmlGetListRes:
    client_id: bytes | None
    server_id: bytes | None
    list_name: bytes | None
    act_sensor_time: SmlTime | None
    entries: tuple[SmlListEntry, ...]
    list_signature: bytes | None
    act_gateway_time: SmlTime | None


SmlBody = SmlPublicOpenRes | SmlPublicCloseRes | SmlGetListRes


@dataclass(frozen=True)
class SmlMessage:
    """One ``SML_Message``. ``body`` is None for message types this decoder skips (``tag``
    says which it was). ``crc`` is the stored message CRC, ``crc_ok`` whether it matches the
    message bytes under any accepted CRC variant."""

    transaction_id: bytes
    group_no: int
    abort_on_error: int
    tag: int
    body: SmlBody | None
    crc: int
    crc_ok: bool

    def __init__(
        self,
        transaction_id: bytes,
        group_no: int,
        abort_on_error: int,
        tag: int,
        body: SmlBody | None,
        crc: int,
        crc_ok: bool,
    ) -> None:
        # Three per frame; see SmlListEntry.__init__.
        fields = self.__dict__
        fields["transaction_id"] = transaction_id
        fields["group_no"] = group_no
        fields["abort_on_error"] = abort_on_error
        fields["tag"] = tag
        fields["body"] = body
        fields["crc"] = crc
        fields["crc_ok"] = crc_ok


check_init_matches_fields(SmlMessage)


def octets_text(value: bytes) -> str:
    """ASCII when every byte is printable (manufacturer flags, versions), else lowercase hex."""
    if value.isascii():
        text = value.decode("ascii")
        if text.isprintable():
            return text
    return value.hex()


def _typed_text(items: TypedValue) -> str:
    parts = []
    for kind, value in items:
        shown = _typed_text(value) if kind == "list" else repr(value)  # type: ignore[arg-type]
        parts.append(f"({kind!r}, {shown})")
    return "[" + ", ".join(parts) + "]"


# ---------------------------------------------------------------------------------------------
# Type-length decoding. Every reader takes (buf, pos) and returns (value, next position); buf is
# the whole payload, so no slicing happens until a value is built.


def _read(buf: bytes, pos: int, depth: int = 0) -> tuple[object, int]:
    """Decode any element: int, bool, bytes, None (absent), _END, or a list of elements."""
    try:
        tl = buf[pos]
    except IndexError:
        raise ProtocolError(f"SML data ends at byte {pos} where a field was expected") from None
    if tl == 0x01:
        return None, pos + 1
    if tl == 0x00:
        return _END, pos + 1
    kind = tl & 0x70
    length = tl & 0x0F
    start = pos + 1
    if tl & 0x80:
        length, start = _long_length(buf, pos, length)
    if kind == 0x70:
        if depth >= _MAX_DEPTH:
            raise ProtocolError(f"SML lists nested deeper than {_MAX_DEPTH} at byte {pos}")
        return _read_list(buf, start, length, depth + 1)
    stop = pos + length
    if stop > len(buf):
        raise ProtocolError(f"SML field at byte {pos} runs past the end of the data")
    if stop <= start:
        if kind == 0x00 and stop == start:
            return b"", start
        raise ProtocolError(f"SML field at byte {pos} is shorter than its type-length bytes")
    if kind == 0x60:
        return int.from_bytes(buf[start:stop], "big"), stop
    if kind == 0x50:
        return int.from_bytes(buf[start:stop], "big", signed=True), stop
    if kind == 0x00:
        return buf[start:stop], stop
    if kind == 0x40:
        return any(buf[start:stop]), stop
    raise ProtocolError(f"unknown SML type-length byte 0x{tl:02x} at byte {pos}")


def _read_list(buf: bytes, pos: int, count: int, depth: int) -> tuple[list[object], int]:
    """The ``count`` elements of a list starting at ``pos``.

    The common one-byte-TL cases (absent field, short octet string, integer) are decoded
    here without a call per element: that is most of an SML frame, and calls are what
    costs time in Python.
    """
    items: list[object] = []
    append = items.append
    from_bytes = _from_bytes
    end = len(buf)
    try:
        for _ in range(count):
            tl = buf[pos]
            if tl == 0x01:
                append(None)
                pos += 1
                continue
            size = tl & 0x0F
            if size > 1 and pos + size <= end:
                kind = tl & 0xF0  # continuation bit included: multi-byte TLs go the slow path
                if kind == 0x60:
                    append(from_bytes(buf[pos + 1 : pos + size]))
                    pos += size
                    continue
                if kind == 0x00:
                    append(buf[pos + 1 : pos + size])
                    pos += size
                    continue
                if kind == 0x50:
                    append(from_bytes(buf[pos + 1 : pos + size], signed=True))
                    pos += size
                    continue
            item, pos = _read(buf, pos, depth)
            append(item)
    except IndexError:
        raise ProtocolError(f"SML data ends at byte {pos} inside a list") from None
    return items, pos


def _long_length(buf: bytes, pos: int, length: int) -> tuple[int, int]:
    """Length spread over several TL bytes; returns (length, position after the TL bytes)."""
    index = pos + 1
    while True:
        if index >= len(buf):
            raise ProtocolError(f"SML type-length field at byte {pos} is cut off")
        if index - pos >= _MAX_TL_BYTES:
            raise ProtocolError(f"SML type-length field at byte {pos} is too long")
        more = buf[index]
        length = length << 4 | more & 0x0F
        index += 1
        if not more & 0x80:
            return length, index


def _list_header(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """Read the TL of a list; returns (element count, position of the first element)."""
    try:
        tl = buf[pos]
    except IndexError:
        raise ProtocolError(f"SML data ends at byte {pos} where {what} was expected") from None
    if tl & 0x70 != 0x70:
        raise ProtocolError(f"{what} expected at byte {pos}, found type-length 0x{tl:02x}")
    if tl & 0x80:
        return _long_length(buf, pos, tl & 0x0F)
    return tl & 0x0F, pos + 1


def _expect_fields(count: int, wanted: int, what: str, pos: int) -> None:
    if count != wanted:
        raise ProtocolError(f"{what} at byte {pos} has {count} fields, expected {wanted}")


_OCTETS_OR_ABSENT = frozenset((bytes, type(None)))
_INTEGER_OR_ABSENT = frozenset((int, type(None)))  # not bool: an int subclass, not a number


def _octets(value: object, what: str) -> bytes | None:
    if value is None or type(value) is bytes:
        return value  # type: ignore[return-value]
    raise ProtocolError(f"{what} must be an octet string, got {_describe(value)}")


def _integer(value: object, what: str) -> int | None:
    if value is None or type(value) is int:
        return value  # type: ignore[return-value]
    raise ProtocolError(f"{what} must be an integer, got {_describe(value)}")


def _describe(value: object) -> str:
    if value is _END:
        return "end of message"
    return type(value).__name__


def _time(value: object, what: str) -> SmlTime | None:
    """Interpret an ``SML_Time`` choice [tag, value]; tolerate a bare integer."""
    if value is None:
        return None
    if type(value) is int:
        return SmlTime(TIME_BARE, value)
    if type(value) is list and len(value) == 2:
        tag, inner = value
        if tag in (TIME_SEC_INDEX, TIME_TIMESTAMP) and type(inner) is int:
            return SmlTime(tag, inner)
        if (
            tag == TIME_LOCAL_TIMESTAMP
            and type(inner) is list
            and len(inner) == 3
            and all(type(part) is int for part in inner)
        ):
            return SmlTime(tag, inner[0], inner[1], inner[2])
    raise ProtocolError(f"{what} is not an SML_Time: {value!r}")


def _typed(buf: bytes, pos: int, depth: int = 0) -> tuple[tuple[str, object], int]:
    """Decode one element keeping its SML type: (kind, value), next position."""
    tl = buf[pos]
    if tl & 0x70 == 0x70:
        count, start = _list_header(buf, pos, "a list")
        if depth >= _MAX_DEPTH:
            raise ProtocolError(f"SML lists nested deeper than {_MAX_DEPTH} at byte {pos}")
        items = []
        for _ in range(count):
            item, start = _typed(buf, start, depth + 1)
            items.append(item)
        return ("list", tuple(items)), start
    value, end = _read(buf, pos, depth)
    if value is None:
        return ("absent", None), end
    if value is _END:
        raise ProtocolError(f"end of message inside a list value at byte {pos}")
    if type(value) is bytes:
        return ("octets", value.hex()), end
    if type(value) is bool:
        return ("bool", value), end
    return ("int" if tl & 0x70 == 0x50 else "uint", value), end


# ---------------------------------------------------------------------------------------------
# Message structure.


def decode_messages(
    payload: bytes | bytearray | memoryview, *, strict: bool = False
) -> tuple[SmlMessage, ...]:
    """Decode a sequence of SML messages (the payload of a frame, or a file of bare messages).

    Trailing 0x00 bytes (padding) are ignored. Raises :class:`ProtocolError` for anything that
    is not a well-formed message sequence; with ``strict=True`` also :class:`ChecksumError`
    when a message CRC does not match (use it for bare messages from an untrusted channel).
    """
    buf = bytes(payload)
    reversed_buf = bit_reversed(buf)  # once for all message CRCs (see crc_matches_any_reversed)
    messages = []
    pos = 0
    end = len(buf)
    while pos < end:
        if buf[pos] == 0x00 and not any(buf[pos:]):
            break  # zero padding after the last message
        message, pos = _message(buf, pos, reversed_buf)
        if strict and not message.crc_ok:
            raise ChecksumError(
                f"SML message {len(messages) + 1} (type 0x{message.tag:04x}): CRC "
                f"{message.crc:04x} does not match"
            )
        messages.append(message)
    if not messages:
        raise ProtocolError("no SML message in the data")
    return tuple(messages)


def _short_uint(buf: bytes, pos: int) -> tuple[int | None, int]:
    """An unsigned integer of 1..14 bytes with a one-byte TL at ``pos`` (message tags, CRCs),
    or (None, pos) for anything else, which the caller then reads the general way."""
    tl = buf[pos] if pos < len(buf) else 0
    size = tl & 0x0F
    if tl & 0xF0 == 0x60 and size > 1 and pos + size <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + size]), pos + size
    return None, pos


def _message(buf: bytes, pos: int, reversed_buf: bytes) -> tuple[SmlMessage, int]:
    begin = pos
    transaction_id, group_no, abort_on_error, tag, pos = _envelope(buf, pos)
    if tag == MSG_GET_LIST_RES:
        body, pos = _get_list_res(buf, pos)
    elif tag == MSG_PUBLIC_OPEN_RES:
        body, pos = _public_open_res(buf, pos)
    elif tag == MSG_PUBLIC_CLOSE_RES:
        body, pos = _public_close_res(buf, pos)
    else:
        body_pos = pos
        skipped, pos = _read(buf, pos)  # walk it so the next message is found
        if skipped is _END:
            raise ProtocolError(f"end of message inside the body at byte {body_pos}")
        body = None
    crc_pos = pos
    # The CRC is an Unsigned16 (63 hh ll) followed by the end-of-message byte: taken directly,
    # anything else the general way.
    if pos + 3 < len(buf) and buf[pos] == 0x63 and buf[pos + 3] == 0x00:
        crc = buf[pos + 1] << 8 | buf[pos + 2]
        pos += 3
    else:
        crc, pos = _short_uint(buf, pos)
        if crc is None:
            (crc,), pos = _read_list(buf, pos, 1, 1)
        if type(crc) is not int:
            raise ProtocolError(f"message CRC at byte {crc_pos} is not an integer")
        if pos >= len(buf) or buf[pos] != 0x00:
            raise ProtocolError(f"end of SML message expected at byte {pos}")
    crc_ok = crc_matches_any_reversed(reversed_buf, begin, crc_pos, crc)
    return SmlMessage(transaction_id, group_no, abort_on_error, tag, body, crc, crc_ok), pos + 1


def _envelope(buf: bytes, pos: int) -> tuple[bytes, int, int, int, int]:
    """The fields of the message at ``pos`` before its body: (transactionId, groupNo,
    abortOnError, message type, position of the body).

    The envelope looks the same in every message: 76, the transactionId as a short octet
    string, groupNo and abortOnError as 62 xx or absent, 72 and the type as a short unsigned.
    That shape is read here directly (one call instead of six per message); anything else the
    general way, which also reports what is wrong with it.
    """
    try:
        tl = buf[pos + 1]
        if buf[pos] == 0x76 and 0x02 <= tl <= 0x0F:
            transaction_id = buf[pos + 2 : pos + 1 + tl]
            p = pos + 1 + tl
            tl = buf[p]
            if tl == 0x62:
                group_no = buf[p + 1]
                p += 2
            elif tl == 0x01:
                group_no = 0
                p += 1
            else:
                return _any_envelope(buf, pos)
            tl = buf[p]
            if tl == 0x62:
                abort_on_error = buf[p + 1]
                p += 2
            elif tl == 0x01:
                abort_on_error = 0
                p += 1
            else:
                return _any_envelope(buf, pos)
            tl = buf[p + 1]
            if buf[p] == 0x72 and 0x62 <= tl <= 0x6F:
                tag = _from_bytes(buf[p + 2 : p + 1 + tl - 0x60])
                p += 1 + tl - 0x60
                # Each slice ends where the next field begins: one check covers them all.
                if p <= len(buf):
                    return transaction_id, group_no, abort_on_error, tag, p
    except IndexError:
        pass  # cut off: the general path says where
    return _any_envelope(buf, pos)


def _any_envelope(buf: bytes, pos: int) -> tuple[bytes, int, int, int, int]:
    """:func:`_envelope` for any encoding of its fields, or a ProtocolError."""
    begin = pos
    if pos < len(buf) and buf[pos] == 0x76:
        pos += 1
    else:
        count, pos = _list_header(buf, pos, "an SML message")
        _expect_fields(count, 6, "SML message", begin)
    (transaction_id, group_no, abort_on_error), pos = _read_list(buf, pos, 3, 1)
    body_pos = pos
    if pos < len(buf) and buf[pos] == 0x72:
        pos += 1
    else:
        count, pos = _list_header(buf, pos, "a message body")
        _expect_fields(count, 2, "SML message body", body_pos)
    tag, pos = _short_uint(buf, pos)
    if tag is None:
        (tag,), pos = _read_list(buf, pos, 1, 1)
    if type(tag) is not int:
        raise ProtocolError(f"message type at byte {body_pos} is not an integer")
    return (
        _octets(transaction_id, "transactionId") or b"",
        _integer(group_no, "groupNo") or 0,
        _integer(abort_on_error, "abortOnError") or 0,
        tag,
        pos,
    )


def _public_open_res(buf: bytes, pos: int) -> tuple[SmlPublicOpenRes, int]:
    if pos < len(buf) and buf[pos] == 0x76:  # the usual one-byte list header, read directly
        (codepage, client_id, req_file_id, server_id), end = _read_list(buf, pos + 1, 4, 1)
        ref_time, end = _optional_time(buf, end, 1, "refTime")
        if buf[end : end + 1] == b"\x62" and end + 2 <= len(buf):  # the usual 62 xx
            version = buf[end + 1]
            end += 2
        else:
            (version,), end = _read_list(buf, end, 1, 1)
    else:
        fields, end = _read(buf, pos)
        if type(fields) is not list or len(fields) != 6:
            raise ProtocolError(f"PublicOpen.Res at byte {pos} is not a list of 6")
        codepage, client_id, req_file_id, server_id, ref_time, version = fields
        ref_time = None if ref_time is None else _time(ref_time, "refTime")
    if (  # one test for the whole message; the validators then say which field is wrong
        type(codepage) not in _OCTETS_OR_ABSENT
        or type(client_id) not in _OCTETS_OR_ABSENT
        or type(req_file_id) not in _OCTETS_OR_ABSENT
        or type(server_id) not in _OCTETS_OR_ABSENT
        or type(version) not in _INTEGER_OR_ABSENT
    ):
        _octets(codepage, "codepage")
        _octets(client_id, "clientId")
        _octets(req_file_id, "reqFileId")
        _octets(server_id, "serverId")
        _integer(version, "smlVersion")
    return SmlPublicOpenRes(
        codepage,  # type: ignore[arg-type]
        client_id,  # type: ignore[arg-type]
        req_file_id,  # type: ignore[arg-type]
        server_id,  # type: ignore[arg-type]
        ref_time,  # type: ignore[arg-type]
        version,  # type: ignore[arg-type]
    ), end


def _public_close_res(buf: bytes, pos: int) -> tuple[SmlPublicCloseRes, int]:
    if buf[pos : pos + 2] == b"\x71\x01":  # the usual: a list of one absent signature
        return SmlPublicCloseRes(None), pos + 2
    if pos < len(buf) and buf[pos] == 0x71:  # the usual one-byte list header, read directly
        fields, end = _read_list(buf, pos + 1, 1, 1)
    else:
        fields, end = _read(buf, pos)
        if type(fields) is not list or len(fields) != 1:
            raise ProtocolError(f"PublicClose.Res at byte {pos} is not a list of 1")
    return SmlPublicCloseRes(_octets(fields[0], "globalSignature")), end


def _get_list_res(buf: bytes, pos: int) -> tuple[SmlGetListRes, int]:
    begin = pos
    if pos < len(buf) and buf[pos] == 0x77:  # the usual one-byte list header, read directly
        pos += 1
    else:
        count, pos = _list_header(buf, pos, "GetList.Res")
        _expect_fields(count, 7, "GetList.Res", begin)
    # Depth 0 as for separate _read() calls; one call for the three fields is cheaper.
    (client_id, server_id, list_name), pos = _read_list(buf, pos, 3, 0)
    sensor_time, pos = _optional_time(buf, pos, 0, "actSensorTime")
    if pos < len(buf) and 0x70 <= buf[pos] <= 0x7F:  # up to 15 entries: a one-byte header
        count = buf[pos] & 0x0F
        pos += 1
    else:
        count, pos = _list_header(buf, pos, "valList")
    entries, pos = _list_entries(buf, pos, count)
    if buf[pos : pos + 2] == b"\x01\x01":  # the usual: neither listSignature nor gateway time
        signature = gateway_time = None
        pos += 2
    else:
        (signature, gateway_time), pos = _read_list(buf, pos, 2, 0)
    if (  # one test for the whole message; the validators then say which field is wrong
        type(client_id) not in _OCTETS_OR_ABSENT
        or type(server_id) not in _OCTETS_OR_ABSENT
        or type(list_name) not in _OCTETS_OR_ABSENT
        or type(signature) not in _OCTETS_OR_ABSENT
    ):
        _octets(client_id, "clientId")
        _octets(server_id, "serverId")
        _octets(list_name, "listName")
        _octets(signature, "listSignature")
    return SmlGetListRes(
        client_id,  # type: ignore[arg-type]
        server_id,  # type: ignore[arg-type]
        list_name,  # type: ignore[arg-type]
        sensor_time,
        tuple(entries),
        signature,  # type: ignore[arg-type]
        None if gateway_time is None else _time(gateway_time, "actGatewayTime"),
    ), pos


class _Unusual(Exception):
    """An encoding the fast path of :func:`_list_entries` does not read: the general path."""


_UNUSUAL = _Unusual()  # raised as is: nothing to say, the general path says what is wrong


def _list_entries(buf: bytes, pos: int, count: int) -> tuple[list[SmlListEntry], int]:
    """The ``count`` ``SML_ListEntry`` at ``pos`` and the position after the last.

    Speed: this loop runs once per register of every frame and was the largest cost of
    decoding (2.1 us per entry through the general element reader, 1.0 us here). Nearly every
    entry on the wire has the same shape: a short octet string as objName, the other fields
    absent or a number with a one-byte TL, valTime one of the usual SML_Time encodings, the
    value maybe a long octet string (public keys) or a list. That shape is decoded here field
    by field, unrolled and inside the loop, without a call per field or per entry, the most
    frequent encoding tested first. Anything else (booleans, long TLs, a type where it does not
    belong, data cut off) raises _Unusual or IndexError and that entry goes to
    :func:`_any_list_entry`, which decodes every shape and says what is wrong; the fast path
    never accepts what that one refuses, nor reads it differently (tests/test_sml_messages.py
    compares the two).
    """
    entries: list[SmlListEntry] = []
    append = entries.append
    from_bytes = _from_bytes
    end = len(buf)
    for _ in range(count):
        try:
            if buf[pos] != 0x77:  # a list of 7
                raise _UNUSUAL
            # objName: octet string, one-byte TL 0x02..0x0f (0x07 for the 6 bytes of OBIS).
            tl = buf[pos + 1]
            if not 0x02 <= tl <= 0x0F:
                raise _UNUSUAL
            obj_name = buf[pos + 2 : pos + 1 + tl]
            p = pos + 1 + tl
            # status: absent or unsigned (0x62..0x6f: 1..14 bytes); seldom signed.
            tl = buf[p]
            if tl == 0x01:
                status = None
                p += 1
            elif 0x62 <= tl <= 0x6F:
                status = from_bytes(buf[p + 1 : p + tl - 0x60])
                p += tl - 0x60
            elif 0x52 <= tl <= 0x5F:
                status = from_bytes(buf[p + 1 : p + tl - 0x50], signed=True)
                p += tl - 0x50
            else:
                raise _UNUSUAL
            # valTime: mostly absent.
            if buf[p] == 0x01:
                val_time = None
                p += 1
            else:
                timed = _usual_time(buf, p)
                if timed is None:
                    raise _UNUSUAL
                val_time, p = timed
            # unit: absent or unsigned (one byte as the standard says: 0x62 xx); seldom signed.
            tl = buf[p]
            if tl == 0x62:
                unit = buf[p + 1]
                p += 2
            elif tl == 0x01:
                unit = None
                p += 1
            elif 0x63 <= tl <= 0x6F:
                unit = from_bytes(buf[p + 1 : p + tl - 0x60])
                p += tl - 0x60
            elif 0x52 <= tl <= 0x5F:
                unit = from_bytes(buf[p + 1 : p + tl - 0x50], signed=True)
                p += tl - 0x50
            else:
                raise _UNUSUAL
            # scaler: absent or signed (one byte as the standard says: 0x52 xx); seldom
            # unsigned.
            tl = buf[p]
            if tl == 0x52:
                scaler = _SIGNED_BYTE[buf[p + 1]]
                p += 2
            elif tl == 0x01:
                scaler = None
                p += 1
            elif 0x53 <= tl <= 0x5F:
                scaler = from_bytes(buf[p + 1 : p + tl - 0x50], signed=True)
                p += tl - 0x50
            elif 0x62 <= tl <= 0x6F:
                scaler = from_bytes(buf[p + 1 : p + tl - 0x60])
                p += tl - 0x60
            else:
                raise _UNUSUAL
            # value: absent, unsigned, signed, an octet string with a one- or two-byte TL,
            # or a list.
            tl = buf[p]
            if tl == 0x01:
                value: EntryValue = None
                p += 1
            elif 0x62 <= tl <= 0x6F:
                value = from_bytes(buf[p + 1 : p + tl - 0x60])
                p += tl - 0x60
            elif 0x52 <= tl <= 0x5F:
                value = from_bytes(buf[p + 1 : p + tl - 0x50], signed=True)
                p += tl - 0x50
            elif 0x02 <= tl <= 0x0F:
                value = buf[p + 1 : p + tl]
                p += tl
            elif tl & 0xF0 == 0x80 and buf[p + 1] & 0xF0 == 0x00:
                # Two TL bytes, both counted in the length: 0x83 0x02 is 0x32 = 48 + 2 bytes.
                size = (tl & 0x0F) << 4 | buf[p + 1]
                if size <= 2:
                    raise _UNUSUAL
                value = buf[p + 2 : p + size]
                p += size
            elif tl & 0xF0 == 0x70:
                # A list as value (EMH: a time), kept with its element types. Depth 1 as in
                # the general path; that one also gives the error if there is one.
                try:
                    (_, value), p = _typed(buf, p, 1)
                except ProtocolError:
                    raise _UNUSUAL from None
            else:
                raise _UNUSUAL
            # valueSignature: absent, seldom a short octet string.
            tl = buf[p]
            if tl == 0x01:
                signature = None
                p += 1
            elif 0x02 <= tl <= 0x0F:
                signature = buf[p + 1 : p + tl]
                p += tl
            else:
                raise _UNUSUAL
            # Every slice above ends where the next field begins, so one check after the
            # last field covers them all: a slice past the end would have come out short.
            if p > end:
                raise _UNUSUAL
        except (_Unusual, IndexError):
            entry, pos = _any_list_entry(buf, pos)
            append(entry)
            continue
        append(SmlListEntry(obj_name, status, val_time, unit, scaler, value, signature))
        pos = p
    return entries, pos


def _usual_time(buf: bytes, pos: int) -> tuple[SmlTime, int] | None:
    """The ``SML_Time`` at ``pos`` in the encodings meters use, and the position after it:
    ``72 62 01|02 6x..`` (secIndex, timestamp), ``72 62 03 73 6x.. 5x.. 5x..`` (localTimestamp
    with its offsets in minutes) or a bare unsigned ``6x..`` (Holley). None for anything else,
    which the caller hands to the general path; IndexError when the data ends."""
    from_bytes = _from_bytes
    tl = buf[pos]
    if 0x62 <= tl <= 0x6F:
        return SmlTime(TIME_BARE, from_bytes(buf[pos + 1 : pos + tl - 0x60])), pos + tl - 0x60
    if tl != 0x72 or buf[pos + 1] != 0x62:
        return None
    kind = buf[pos + 2]
    p = pos + 3
    if kind == TIME_LOCAL_TIMESTAMP and buf[p] == 0x73:
        p += 1
    elif kind != TIME_SEC_INDEX and kind != TIME_TIMESTAMP:
        return None
    tl = buf[p]
    if not 0x62 <= tl <= 0x6F:
        return None
    seconds = from_bytes(buf[p + 1 : p + tl - 0x60])
    p += tl - 0x60
    if kind != TIME_LOCAL_TIMESTAMP:
        return SmlTime(kind, seconds), p
    offsets = []
    for _ in range(2):
        tl = buf[p]
        if not 0x52 <= tl <= 0x5F:
            return None
        offsets.append(from_bytes(buf[p + 1 : p + tl - 0x50], signed=True))
        p += tl - 0x50
    return SmlTime(kind, seconds, offsets[0], offsets[1]), p


def _optional_time(buf: bytes, pos: int, depth: int, what: str) -> tuple[SmlTime | None, int]:
    """An optional SML_Time field at ``pos`` (refTime, actSensorTime) and the position after it.

    Speed: read directly when absent or in a usual encoding (see :func:`_usual_time`),
    instead of as a nested list of elements first (0.8 us per frame); anything else the
    general way, which also says what is wrong with it. ``depth`` is the nesting of the
    field, as the general reader counts it."""
    try:
        if buf[pos] == 0x01:
            return None, pos + 1
        timed = _usual_time(buf, pos)
    except IndexError:
        timed = None  # cut off: the general path says where
    # The last slice _usual_time takes ends at the position it returns: past the end of the
    # data it would have come out short.
    if timed is not None and timed[1] <= len(buf):
        return timed
    value, pos = _read(buf, pos, depth)
    return _time(value, what), pos


def _any_list_entry(buf: bytes, pos: int) -> tuple[SmlListEntry, int]:
    """Any ``SML_ListEntry``, however its fields are encoded, or a ProtocolError naming the
    first thing wrong with it."""
    if pos < len(buf) and buf[pos] == 0x77:
        fields, end = _read_list(buf, pos + 1, 7, 1)
    else:
        fields, end = _read(buf, pos)
        if type(fields) is not list or len(fields) != 7:
            raise ProtocolError(f"SML_ListEntry at byte {pos} is not a list of 7")
    obj_name, status, val_time, unit, scaler, value, signature = fields
    if type(obj_name) is not bytes:
        raise ProtocolError(f"objName of the list entry at byte {pos} is not an octet string")
    if status is not None and type(status) is not int:
        raise ProtocolError(f"status of the list entry at byte {pos} is not an integer")
    if unit is not None and type(unit) is not int:
        raise ProtocolError(f"unit of the list entry at byte {pos} is not an integer")
    if scaler is not None and type(scaler) is not int:
        raise ProtocolError(f"scaler of the list entry at byte {pos} is not an integer")
    if signature is not None and type(signature) is not bytes:
        raise ProtocolError(f"valueSignature of the entry at byte {pos} is not an octet string")
    if type(value) is list:
        value = _typed(buf, _field_position(buf, pos, 5))[0][1]
    elif value is _END:
        raise ProtocolError(f"end of message inside the list entry at byte {pos}")
    return SmlListEntry(
        obj_name,
        status,
        None if val_time is None else _time(val_time, "valTime"),
        unit,
        scaler,
        value,  # type: ignore[arg-type]
        signature,
    ), end


def _field_position(buf: bytes, pos: int, index: int) -> int:
    """Where field ``index`` of the (already decoded, so well-formed) list at ``pos`` starts."""
    _, pos = _list_header(buf, pos, "a list")
    for _ in range(index):
        _, pos = _read(buf, pos)
    return pos
