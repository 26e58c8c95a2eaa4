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
        # slots here.) _check_init_matches_fields() keeps it in step with the fields.
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
        scaler = self.scaler
        if not scaler:
            return Decimal(value)
        if scaler > 0:
            return Decimal(value * 10**scaler)
        return Decimal(value).scaleb(scaler, _EXACT)

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


def _check_init_matches_fields(cls: type) -> None:
    """A hand-written dataclass __init__ must take exactly the fields, in order."""
    code = cls.__init__.__code__  # type: ignore[misc]
    parameters = code.co_varnames[1 : code.co_argcount]
    names = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    if parameters != names:
        raise TypeError(f"{cls.__name__}.__init__{parameters} does not match its fields {names}")


_check_init_matches_fields(SmlListEntry)


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


_check_init_matches_fields(SmlMessage)


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
    from_bytes = int.from_bytes
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
    messages = []
    pos = 0
    end = len(buf)
    while pos < end:
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


def _short_uint(buf: bytes, pos: int) -> tuple[int | None, int]:
    """An unsigned integer of 1..14 bytes with a one-byte TL at ``pos`` (message tags, CRCs),
    or (None, pos) for anything else, which the caller then reads the general way."""
    tl = buf[pos] if pos < len(buf) else 0
    size = tl & 0x0F
    if tl & 0xF0 == 0x60 and size > 1 and pos + size <= len(buf):
        return int.from_bytes(buf[pos + 1 : pos + size]), pos + size
    return None, pos


def _message(buf: bytes, pos: int) -> tuple[SmlMessage, int]:
    begin = pos
    # The envelope is the same in every message: the usual one-byte TLs are taken directly,
    # anything else the general way (which also reports what is wrong with it).
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
    if tag == MSG_GET_LIST_RES:
        body, pos = _get_list_res(buf, pos)
    elif tag == MSG_PUBLIC_OPEN_RES:
        body, pos = _public_open_res(buf, pos)
    elif tag == MSG_PUBLIC_CLOSE_RES:
        body, pos = _public_close_res(buf, pos)
    else:
        skipped, pos = _read(buf, pos)  # walk it so the next message is found
        if skipped is _END:
            raise ProtocolError(f"end of message inside the body at byte {body_pos}")
        body = None
    crc_pos = pos
    crc, pos = _short_uint(buf, pos)
    if crc is None:
        (crc,), pos = _read_list(buf, pos, 1, 1)
    if type(crc) is not int:
        raise ProtocolError(f"message CRC at byte {crc_pos} is not an integer")
    if pos >= len(buf) or buf[pos] != 0x00:
        raise ProtocolError(f"end of SML message expected at byte {pos}")
    crc_ok = crc_matches_any(memoryview(buf)[begin:crc_pos], crc)
    message = SmlMessage(
        _octets(transaction_id, "transactionId") or b"",
        _integer(group_no, "groupNo") or 0,
        _integer(abort_on_error, "abortOnError") or 0,
        tag,
        body,
        crc,
        crc_ok,
    )
    return message, pos + 1


def _public_open_res(buf: bytes, pos: int) -> tuple[SmlPublicOpenRes, int]:
    fields, end = _read(buf, pos)
    if type(fields) is not list or len(fields) != 6:
        raise ProtocolError(f"PublicOpen.Res at byte {pos} is not a list of 6")
    codepage, client_id, req_file_id, server_id, ref_time, version = fields
    return SmlPublicOpenRes(
        codepage=_octets(codepage, "codepage"),
        client_id=_octets(client_id, "clientId"),
        req_file_id=_octets(req_file_id, "reqFileId"),
        server_id=_octets(server_id, "serverId"),
        ref_time=_time(ref_time, "refTime"),
        sml_version=_integer(version, "smlVersion"),
    ), end


def _public_close_res(buf: bytes, pos: int) -> tuple[SmlPublicCloseRes, int]:
    fields, end = _read(buf, pos)
    if type(fields) is not list or len(fields) != 1:
        raise ProtocolError(f"PublicClose.Res at byte {pos} is not a list of 1")
    return SmlPublicCloseRes(global_signature=_octets(fields[0], "globalSignature")), end


def _get_list_res(buf: bytes, pos: int) -> tuple[SmlGetListRes, int]:
    begin = pos
    count, pos = _list_header(buf, pos, "GetList.Res")
    _expect_fields(count, 7, "GetList.Res", begin)
    # Depth 0 as for separate _read() calls; one call for the four fields is cheaper.
    (client_id, server_id, list_name, sensor_time), pos = _read_list(buf, pos, 4, 0)
    count, pos = _list_header(buf, pos, "valList")
    entries = []
    for _ in range(count):
        entry, pos = _list_entry(buf, pos)
        entries.append(entry)
    (signature, gateway_time), pos = _read_list(buf, pos, 2, 0)
    return SmlGetListRes(
        client_id=_octets(client_id, "clientId"),
        server_id=_octets(server_id, "serverId"),
        list_name=_octets(list_name, "listName"),
        act_sensor_time=_time(sensor_time, "actSensorTime"),
        entries=tuple(entries),
        list_signature=_octets(signature, "listSignature"),
        act_gateway_time=_time(gateway_time, "actGatewayTime"),
    ), pos


def _list_entry(buf: bytes, pos: int) -> tuple[SmlListEntry, int]:
    # Called once per register: the checks are inline because calls cost most in Python.
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
