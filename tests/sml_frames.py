"""Build SML 1.04 messages and SML transport v1 frames, as a meter would send them.

Used by the SML tests (round trips, the differential test against SmlLib) and meant for the
SML push-meter simulator as well, so it depends on nothing of ``iskra_me162``: its CRC is a
plain bit-by-bit implementation, independent of the table/binascii one under test.

Typical use::

    frame = sml_frame(
        [
            Entry("129-129:199.130.3*255", b"ISK"),
            Entry("1-0:1.8.0*255", 123456789, unit=UNIT_WH, scaler=-1),
            Entry("1-0:16.7.0*255", -42, unit=UNIT_W, scaler=0, width=4),
        ],
        server_id=bytes.fromhex("0a0149534b0005020de2"),
    )

Building blocks, from small to large: the TL encoders (:func:`octets`, :func:`unsigned`,
:func:`signed`, :func:`boolean`, :func:`sml_list`, :data:`ABSENT`), :func:`list_entry`,
the message bodies (:func:`public_open_res`, :func:`get_list_res`, :func:`public_close_res`),
:func:`message` (adds the message CRC), :func:`messages` (open + list + close),
:func:`transport_frame` (escapes, padding, frame CRC) and :func:`sml_frame` (all of it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
ABSENT = b"\x01"  # an optional field that is not set
END_OF_MESSAGE = b"\x00"

MSG_PUBLIC_OPEN_RES = 0x0101
MSG_PUBLIC_CLOSE_RES = 0x0201
MSG_GET_LIST_RES = 0x0701

# DLMS unit codes most used by electricity meters.
UNIT_DEG = 8
UNIT_W = 27
UNIT_VA = 28
UNIT_VAR = 29
UNIT_WH = 30
UNIT_VAH = 31
UNIT_VARH = 32
UNIT_A = 33
UNIT_V = 35
UNIT_HZ = 44

# Frame CRC variants, spelled as iskra_me162.protocols.sml_crc spells them.
CRC_X25_LSB_FIRST = "x25/lsb-first"
CRC_X25_MSB_FIRST = "x25/msb-first"
CRC_KERMIT_LSB_FIRST = "kermit/lsb-first"
CRC_KERMIT_MSB_FIRST = "kermit/msb-first"
CRC_VARIANTS = (CRC_X25_LSB_FIRST, CRC_X25_MSB_FIRST, CRC_KERMIT_LSB_FIRST, CRC_KERMIT_MSB_FIRST)

_TYPE_OCTETS = 0x00
_TYPE_BOOL = 0x40
_TYPE_SIGNED = 0x50
_TYPE_UNSIGNED = 0x60
_TYPE_LIST = 0x70

_OBIS_TEXT = re.compile(r"^(\d+)-(\d+):(\d+)\.(\d+)\.(\d+)\*(\d+)$")


# --- CRC -------------------------------------------------------------------------------------


def crc16(data: bytes, algorithm: str = "x25") -> int:
    """CRC-16 register, bit by bit: "x25" (init/xorout 0xFFFF) or "kermit" (init/xorout 0)."""
    if algorithm not in ("x25", "kermit"):
        raise ValueError(f"unknown CRC algorithm {algorithm!r}")
    register = 0xFFFF if algorithm == "x25" else 0x0000
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ 0x8408 if register & 1 else register >> 1
    return register ^ 0xFFFF if algorithm == "x25" else register


def crc_bytes(data: bytes, variant: str = CRC_X25_LSB_FIRST) -> bytes:
    """The two CRC bytes a sender using ``variant`` puts after ``data``."""
    algorithm, _, order = variant.partition("/")
    if variant not in CRC_VARIANTS:
        raise ValueError(f"unknown CRC variant {variant!r}; choose from {CRC_VARIANTS}")
    return crc16(data, algorithm).to_bytes(2, "little" if order == "lsb-first" else "big")


# --- type-length fields ----------------------------------------------------------------------


def tl(kind: int, length: int) -> bytes:
    """Type-length bytes. ``length`` is what the TL announces: for lists the element count,
    for everything else the byte count *including* these TL bytes (the caller passes the data
    length plus the TL size; :func:`_with_tl` works that out)."""
    nibbles = []
    while True:
        nibbles.append(length & 0x0F)
        length >>= 4
        if not length:
            break
    nibbles.reverse()
    out = bytearray()
    for index, nibble in enumerate(nibbles):
        more = 0x80 if index < len(nibbles) - 1 else 0x00
        out.append(more | (kind if index == 0 else 0) | nibble)
    return bytes(out)


def _with_tl(kind: int, data: bytes) -> bytes:
    # The announced length counts the TL bytes too: take the fewest TL bytes whose nibbles
    # can hold data length + TL length.
    size = 1
    while len(data) + size >= 16**size:
        size += 1
    return tl(kind, len(data) + size) + data


def octets(data: bytes | str) -> bytes:
    """An octet string (``str`` is encoded as ASCII)."""
    raw = data.encode("ascii") if isinstance(data, str) else bytes(data)
    return _with_tl(_TYPE_OCTETS, raw)


def _int_width(value: int, is_signed: bool) -> int:
    width = 1
    while True:
        try:
            value.to_bytes(width, "big", signed=is_signed)
            return width
        except OverflowError:
            width += 1


def unsigned(value: int, width: int | None = None) -> bytes:
    """An unsigned integer, ``width`` bytes (default: as few as fit)."""
    width = width or _int_width(value, False)
    return _with_tl(_TYPE_UNSIGNED, value.to_bytes(width, "big", signed=False))


def signed(value: int, width: int | None = None) -> bytes:
    """A signed (two's complement) integer, ``width`` bytes (default: as few as fit)."""
    width = width or _int_width(value, True)
    return _with_tl(_TYPE_SIGNED, value.to_bytes(width, "big", signed=True))


def boolean(value: bool) -> bytes:
    return bytes([_TYPE_BOOL | 2, 0x01 if value else 0x00])


def sml_list(*items: bytes) -> bytes:
    """A list of already encoded elements."""
    return tl(_TYPE_LIST, len(items)) + b"".join(items)


def optional(encoded: bytes | None) -> bytes:
    return ABSENT if encoded is None else encoded


def sml_time_sec_index(seconds: int) -> bytes:
    """SML_Time choice 1 (secIndex), the way meters send it."""
    return sml_list(unsigned(1, 1), unsigned(seconds, 4))


# --- list entries and message bodies ---------------------------------------------------------


def obis_bytes(code: str | bytes) -> bytes:
    """``"1-0:1.8.0*255"`` (all six groups) or 6 raw bytes."""
    if isinstance(code, bytes):
        if len(code) != 6:
            raise ValueError(f"an OBIS code has 6 bytes, got {len(code)}")
        return code
    match = _OBIS_TEXT.match(code)
    if match is None:
        raise ValueError(f"write OBIS codes as A-B:C.D.E*F, got {code!r}")
    return bytes(int(group) for group in match.groups())


@dataclass(frozen=True)
class Entry:
    """One SML_ListEntry to send.

    ``value``: ``int`` (encoded signed when ``signed`` is True, or when it is None and the
    value is negative; unsigned otherwise; ``width`` bytes, default as few as fit), ``bytes``
    or ``str`` (octet string), ``bool``, or None (absent). ``unit`` is a DLMS unit code,
    ``scaler`` a power of ten (int8), ``val_time`` a secIndex.
    """

    obis: str | bytes
    value: int | bytes | str | bool | None
    unit: int | None = None
    scaler: int | None = None
    status: int | None = None
    val_time: int | None = None
    width: int | None = None
    signed: bool | None = None
    value_signature: bytes | None = None

    def encoded_value(self) -> bytes:
        value = self.value
        if value is None:
            return ABSENT
        if isinstance(value, bool):
            return boolean(value)
        if isinstance(value, int):
            use_signed = self.signed if self.signed is not None else value < 0
            return signed(value, self.width) if use_signed else unsigned(value, self.width)
        return octets(value)


def list_entry(entry: Entry) -> bytes:
    return sml_list(
        octets(obis_bytes(entry.obis)),
        optional(None if entry.status is None else unsigned(entry.status)),
        optional(None if entry.val_time is None else sml_time_sec_index(entry.val_time)),
        optional(None if entry.unit is None else unsigned(entry.unit, 1)),
        optional(None if entry.scaler is None else signed(entry.scaler, 1)),
        entry.encoded_value(),
        optional(None if entry.value_signature is None else octets(entry.value_signature)),
    )


def public_open_res(
    server_id: bytes, req_file_id: bytes = b"\x00\x01", sml_version: int = 1
) -> bytes:
    return sml_list(
        ABSENT,  # codepage
        ABSENT,  # clientId
        octets(req_file_id),
        octets(server_id),
        ABSENT,  # refTime
        unsigned(sml_version, 1),
    )


def get_list_res(
    server_id: bytes,
    entries: Iterable[Entry],
    *,
    sensor_time: int | None = None,
    list_name: bytes | None = None,
) -> bytes:
    return sml_list(
        ABSENT,  # clientId
        octets(server_id),
        optional(None if list_name is None else octets(list_name)),
        optional(None if sensor_time is None else sml_time_sec_index(sensor_time)),
        sml_list(*(list_entry(entry) for entry in entries)),
        ABSENT,  # listSignature
        ABSENT,  # actGatewayTime
    )


def public_close_res() -> bytes:
    return sml_list(ABSENT)  # no global signature


def message(
    tag: int,
    body: bytes,
    *,
    transaction_id: bytes,
    group_no: int = 0,
    abort_on_error: int = 0,
    crc_algorithm: str = "x25",
    crc_override: int | None = None,
) -> bytes:
    """One SML_Message with its CRC (X-25 over the message up to the CRC, sent as the
    uint16 of the byte-swapped register, i.e. low byte first; Kermit high byte first, as
    Holley does). ``crc_override`` sends that value instead, to build a wrong CRC."""
    head = (
        tl(_TYPE_LIST, 6)
        + octets(transaction_id)
        + unsigned(group_no, 1)
        + unsigned(abort_on_error, 1)
        + sml_list(unsigned(tag, 2), body)
    )
    register = crc16(head, crc_algorithm)
    if crc_override is not None:
        value = crc_override
    elif crc_algorithm == "x25":
        value = (register & 0xFF) << 8 | register >> 8
    else:
        value = register
    return head + unsigned(value, 2) + END_OF_MESSAGE


def messages(
    entries: Sequence[Entry],
    *,
    server_id: bytes = bytes.fromhex("0a01495346000000002a"),
    transaction: int = 1,
    crc_algorithm: str = "x25",
    sensor_time: int | None = None,
) -> bytes:
    """PublicOpen.Res, GetList.Res with ``entries``, PublicClose.Res: what a push meter sends."""
    ids = [(transaction * 3 + offset).to_bytes(4, "big") for offset in range(3)]
    return b"".join(
        [
            message(
                MSG_PUBLIC_OPEN_RES,
                public_open_res(server_id),
                transaction_id=ids[0],
                crc_algorithm=crc_algorithm,
            ),
            message(
                MSG_GET_LIST_RES,
                get_list_res(server_id, entries, sensor_time=sensor_time),
                transaction_id=ids[1],
                crc_algorithm=crc_algorithm,
            ),
            message(
                MSG_PUBLIC_CLOSE_RES,
                public_close_res(),
                transaction_id=ids[2],
                crc_algorithm=crc_algorithm,
            ),
        ]
    )


# --- transport -------------------------------------------------------------------------------


def escape(payload: bytes) -> bytes:
    """Send every 1b1b1b1b of the payload twice."""
    return payload.replace(ESCAPE, ESCAPE + ESCAPE)


def transport_frame(
    payload: bytes,
    *,
    crc_variant: str = CRC_X25_LSB_FIRST,
    padding: int | None = None,
) -> bytes:
    """Wrap ``payload`` (SML messages) in a transport v1 frame.

    ``padding`` forces the padding count (it must still align the end sequence: the standard
    uses 0..3, DZG meters send 4 on an aligned payload); default: the smallest.
    """
    body = escape(payload)
    needed = -len(body) % 4
    if padding is None:
        padding = needed
    elif padding % 4 != needed:
        raise ValueError(f"padding {padding} does not align a {len(body)}-byte payload")
    frame = START + body + bytes(padding) + ESCAPE + bytes([0x1A, padding])
    return frame + crc_bytes(frame, crc_variant)


def sml_frame(
    entries: Sequence[Entry],
    *,
    server_id: bytes = bytes.fromhex("0a01495346000000002a"),
    transaction: int = 1,
    crc_variant: str = CRC_X25_LSB_FIRST,
    sensor_time: int | None = None,
) -> bytes:
    """A complete frame as a push meter sends it every second or so."""
    algorithm = crc_variant.partition("/")[0]
    payload = messages(
        entries,
        server_id=server_id,
        transaction=transaction,
        crc_algorithm=algorithm,
        sensor_time=sensor_time,
    )
    return transport_frame(payload, crc_variant=crc_variant)
