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

One reader, :func:`_read`, turns a TL field into a Python value (lists into Python lists); the
message structures are read field by field with it and then checked, so every malformed input
gets one :class:`ProtocolError` naming the first thing wrong with it.

One meter quirk is corrected here, where the encoding of a value is still known: see
:func:`_dzg_unsigned_power`.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal

from iskra_me162.errors import ChecksumError, ProtocolError
from iskra_me162.protocols.sml_crc import crc_matches_any

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


@dataclass(frozen=True, slots=True)
class SmlTime:
    """An ``SML_Time``: ``kind`` is TIME_SEC_INDEX (seconds since some meter-internal start),
    TIME_TIMESTAMP (Unix time, UTC), TIME_LOCAL_TIMESTAMP (Unix time plus offsets in minutes)
    or TIME_BARE (the meter sent only an integer)."""

    kind: int
    seconds: int
    local_offset: int = 0
    season_offset: int = 0


# A list value (SML_ListType, e.g. a time stamp as value) is kept with its element types:
# a tuple of (kind, value) with kind "uint", "int", "bool", "octets" (value as hex), "absent"
# (value None) or "list" (value a tuple of such pairs again).
TypedValue = tuple[tuple[str, object], ...]
EntryValue = int | bool | bytes | TypedValue | None


@dataclass(frozen=True, slots=True)
class SmlListEntry:
    """One ``SML_ListEntry`` as sent. ``obj_name`` is the OBIS code (normally 6 bytes)."""

    obj_name: bytes
    status: int | None
    val_time: SmlTime | None
    unit: int | None
    scaler: int | None
    value: EntryValue
    value_signature: bytes | None = None

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


@dataclass(frozen=True, slots=True)
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
# the whole payload, so no slicing happens until a value is built. ``depth`` is how many lists
# enclose the element, so that recursion stays bounded on hostile input.


def _read(buf: bytes, pos: int, depth: int) -> tuple[object, int]:
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
    """The ``count`` elements of a list whose first element is at ``pos``."""
    items = []
    for _ in range(count):
        item, pos = _read(buf, pos, depth)
        items.append(item)
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


def _structure(buf: bytes, pos: int, fields: int, what: str) -> int:
    """Check that a list of ``fields`` elements (an SML structure) starts at ``pos``; returns
    the position of its first element."""
    count, start = _list_header(buf, pos, what)
    if count != fields:
        raise ProtocolError(f"{what} at byte {pos} has {count} fields, expected {fields}")
    return start


def _octets(value: object, what: str) -> bytes | None:
    if value is None or type(value) is bytes:
        return value  # type: ignore[return-value]
    raise ProtocolError(f"{what} must be an octet string, got {_describe(value)}")


def _integer(value: object, what: str) -> int | None:
    if value is None or type(value) is int:  # not bool: an int subclass, not a number
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


def _typed(buf: bytes, pos: int, depth: int) -> tuple[tuple[str, object], int]:
    """Decode one element keeping its SML type: (kind, value), next position."""
    if pos < len(buf) and buf[pos] & 0x70 == 0x70:
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
    return ("int" if buf[pos] & 0x70 == 0x50 else "uint", value), end


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
    messages = []
    pos = 0
    while pos < len(buf):
        if buf[pos] == 0x00 and not any(buf[pos:]):
            break  # zero padding after the last message
        message, pos = _message(buf, pos)
        if strict and not message.crc_ok:
            raise ChecksumError(
                f"SML message {len(messages) + 1} (type 0x{message.tag:04x}): CRC "
                f"{message.crc:04x} does not match"
            )
        messages.append(message)
    if not messages:
        raise ProtocolError("no SML message in the data")
    return tuple(messages)


def _message(buf: bytes, pos: int) -> tuple[SmlMessage, int]:
    """``SML_Message``: transactionId, groupNo, abortOnError, messageBody (the type and the
    body), crc16 over the message bytes before it, endOfSmlMsg (0x00)."""
    begin = pos
    pos = _structure(buf, pos, 6, "an SML message")
    (transaction_id, group_no, abort_on_error), pos = _read_list(buf, pos, 3, 1)
    transaction_id = _octets(transaction_id, "transactionId") or b""
    group_no = _integer(group_no, "groupNo") or 0
    abort_on_error = _integer(abort_on_error, "abortOnError") or 0
    body_pos = pos
    pos = _structure(buf, pos, 2, "an SML message body")
    tag, pos = _read(buf, pos, 2)
    if type(tag) is not int:
        raise ProtocolError(f"message type at byte {body_pos} is not an integer")
    body: SmlBody | None
    if tag == MSG_GET_LIST_RES:
        body, pos = _get_list_res(buf, pos)
    elif tag == MSG_PUBLIC_OPEN_RES:
        body, pos = _public_open_res(buf, pos)
    elif tag == MSG_PUBLIC_CLOSE_RES:
        body, pos = _public_close_res(buf, pos)
    else:
        skipped, end = _read(buf, pos, 2)  # walk it so the next message is found
        if skipped is _END:
            raise ProtocolError(f"end of message inside the body at byte {pos}")
        body, pos = None, end
    crc_pos = pos
    crc, pos = _read(buf, pos, 1)
    if type(crc) is not int:
        raise ProtocolError(f"message CRC at byte {crc_pos} is not an integer")
    if pos >= len(buf) or buf[pos] != 0x00:
        raise ProtocolError(f"end of SML message expected at byte {pos}")
    crc_ok = crc_matches_any(buf[begin:crc_pos], crc)
    return SmlMessage(transaction_id, group_no, abort_on_error, tag, body, crc, crc_ok), pos + 1


def _public_open_res(buf: bytes, pos: int) -> tuple[SmlPublicOpenRes, int]:
    start = _structure(buf, pos, 6, "PublicOpen.Res")
    fields, end = _read_list(buf, start, 6, 3)
    codepage, client_id, req_file_id, server_id, ref_time, version = fields
    return SmlPublicOpenRes(
        _octets(codepage, "codepage"),
        _octets(client_id, "clientId"),
        _octets(req_file_id, "reqFileId"),
        _octets(server_id, "serverId"),
        _time(ref_time, "refTime"),
        _integer(version, "smlVersion"),
    ), end


def _public_close_res(buf: bytes, pos: int) -> tuple[SmlPublicCloseRes, int]:
    start = _structure(buf, pos, 1, "PublicClose.Res")
    (signature,), end = _read_list(buf, start, 1, 3)
    return SmlPublicCloseRes(_octets(signature, "globalSignature")), end


def _get_list_res(buf: bytes, pos: int) -> tuple[SmlGetListRes, int]:
    pos = _structure(buf, pos, 7, "GetList.Res")
    (client_id, server_id, list_name, sensor_time), pos = _read_list(buf, pos, 4, 3)
    server_id = _octets(server_id, "serverId")
    count, pos = _list_header(buf, pos, "valList")
    unsigned_power = _dzg_unsigned_power(server_id)
    entries = []
    for _ in range(count):
        entry, pos = _list_entry(buf, pos, unsigned_power)
        entries.append(entry)
    (signature, gateway_time), pos = _read_list(buf, pos, 2, 3)
    return SmlGetListRes(
        _octets(client_id, "clientId"),
        server_id,
        _octets(list_name, "listName"),
        _time(sensor_time, "actSensorTime"),
        tuple(entries),
        _octets(signature, "listSignature"),
        _time(gateway_time, "actGatewayTime"),
    ), pos


def _list_entry(buf: bytes, pos: int, unsigned_power: bool) -> tuple[SmlListEntry, int]:
    """``SML_ListEntry``: objName, status, valTime, unit, scaler, value, valueSignature.

    A list as value (EMH sends a time there) is kept with its element types (:func:`_typed`);
    ``unsigned_power`` corrects the DZG fault described at :func:`_dzg_unsigned_power`.
    """
    begin = pos
    pos = _structure(buf, pos, 7, "SML_ListEntry")
    (obj_name, status, val_time, unit, scaler), pos = _read_list(buf, pos, 5, 5)
    if type(obj_name) is not bytes:
        raise ProtocolError(f"objName of the list entry at byte {begin} is not an octet string")
    for what, number in (("status", status), ("unit", unit), ("scaler", scaler)):
        if number is not None and type(number) is not int:
            raise ProtocolError(f"{what} of the list entry at byte {begin} is not an integer")
    value_pos = pos
    if pos < len(buf) and buf[pos] & 0x70 == 0x70:
        (_, value), pos = _typed(buf, pos, 5)
    else:
        value, pos = _read(buf, pos, 5)
    if value is _END:
        raise ProtocolError(f"end of message inside the list entry at byte {begin}")
    if unsigned_power and obj_name == _POWER and type(value) is int and value < 0:
        value = _as_unsigned(buf, value_pos, value)
    signature, pos = _read(buf, pos, 5)
    if signature is not None and type(signature) is not bytes:
        raise ProtocolError(f"valueSignature of the entry at byte {begin} is not an octet string")
    entry = SmlListEntry(
        obj_name,
        status,  # type: ignore[arg-type]
        _time(val_time, "valTime"),
        unit,  # type: ignore[arg-type]
        scaler,  # type: ignore[arg-type]
        value,  # type: ignore[arg-type]
        signature,  # type: ignore[arg-type]
    )
    return entry, pos


# ---------------------------------------------------------------------------------------------
# A meter fault corrected here.

_POWER = bytes((1, 0, 16, 7, 0, 255))  # 1-0:16.7.0*255, sum active instantaneous power
# DZG server ids (DIN 43863-5): 0a 01 'DZG', then the serial number as a 5-byte integer.
_DZG_ID_HEAD = b"\x0a\x01DZG"
# The DVS74 serial numbers whose firmware has the fault (fixed from 60 000 000 on).
_FAULTY_DVS74_SERIALS = (range(42_000_000, 49_000_000), range(55_000_000, 59_000_000))


def _dzg_unsigned_power(server_id: bytes | None) -> bool:
    """Whether ``server_id`` is a DZG DVS74 that sends 16.7.0 unsigned in a signed field.

    These meters send the power (W, scaler -2) as a signed integer in the fewest bytes that
    the *unsigned* number needs: +356.00 W is 35600 = 0x8b10, sent as ``53 8b 10``, which is
    Integer16 -29936, i.e. -299.36 W. Negative power they always send in four bytes
    (``55 ff fe 13 93`` = -1260.61 W), whose sign bit no real power reaches (it would take
    21 MW), so from such a meter a negative value in one or two bytes is a positive one.

    Which meters: DZG told the libsml maintainers that only DVS74 meters have the fault, only
    those with serial numbers below 60 000 000, and that the ranges 42 000 000..48 999 999
    and 55 000 000..58 999 999 are the DVS74's (volkszaehler/libsml pull request #136, after
    issues #59, #105 and #132; vzlogger reads SML through libsml). libsml takes the serial
    from the 1-0:96.1.0*255 entry; the GetList.Res server id that we read it from comes before
    the entries and is the same ten bytes on DZG meters. Other DZG models and newer DVS74 send
    small negative values in two bytes correctly, so for them, as for every other
    manufacturer, a negative value stays negative.
    """
    if server_id is None or len(server_id) != 10 or not server_id.startswith(_DZG_ID_HEAD):
        return False
    serial = int.from_bytes(server_id[len(_DZG_ID_HEAD) :], "big")
    return any(serial in serials for serials in _FAULTY_DVS74_SERIALS)


def _as_unsigned(buf: bytes, pos: int, value: int) -> int:
    """``value``, read as signed from the one- or two-byte integer at ``pos``, as unsigned;
    unchanged when it was sent in more bytes (see :func:`_dzg_unsigned_power`)."""
    tl = buf[pos]
    if tl in (0x52, 0x53):  # Integer8 / Integer16: one TL byte and one or two data bytes
        return value + (1 << 8 * (tl - 0x51))
    return value
