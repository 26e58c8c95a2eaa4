"""Build SML 1.04 messages and SML transport v1 frames the way a push meter does (simulator side).

The decoder lives in :mod:`iskra_me162.protocols.sml`; this is the other direction, for the
simulated push meter. It writes what an ISKRA MT175 writes: fixed field widths (so a frame keeps
its length from one second to the next), energy as a signed 8-byte integer, power as a signed
4-byte integer, message CRCs and the frame CRC as CRC-16/X-25 sent low byte first.

The tests keep their own, independent encoder (``tests/sml_frames.py``, bit-by-bit CRC) as the
reference, so a mistake shared by this module and the decoder cannot hide.

Type-length byte (``e ttt llll``): ``ttt`` 000 octet string, 101 signed, 110 unsigned, 111
list; for lists the length counts elements, for everything else the bytes *including* the TL
bytes; a set ``e`` bit means another TL byte with four more length bits follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from iskra_me162.protocols.sml_crc import crc16_x25

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
ABSENT = b"\x01"  # an optional field that is not there
END_OF_MESSAGE = b"\x00"

MSG_PUBLIC_OPEN_RES = 0x0101
MSG_PUBLIC_CLOSE_RES = 0x0201
MSG_GET_LIST_RES = 0x0701

_OCTETS = 0x00
_SIGNED = 0x50
_UNSIGNED = 0x60
_LIST = 0x70


def type_length(kind: int, length: int) -> bytes:
    """The TL bytes announcing ``length`` (see the module docstring for what it counts)."""
    if length < 0:
        raise ValueError(f"negative SML length {length}")
    nibbles = [length & 0x0F]
    length >>= 4
    while length:
        nibbles.append(length & 0x0F)
        length >>= 4
    nibbles.reverse()
    last = len(nibbles) - 1
    return bytes(
        (0x80 if index < last else 0) | (kind if index == 0 else 0) | nibble
        for index, nibble in enumerate(nibbles)
    )


def _field(kind: int, data: bytes) -> bytes:
    """``data`` behind a TL whose length includes the TL bytes themselves."""
    tl_size = 1
    while len(data) + tl_size > 16**tl_size - 1:  # the length nibbles must hold data + TL
        tl_size += 1
    return type_length(kind, len(data) + tl_size) + data


def octet_string(data: bytes) -> bytes:
    return _field(_OCTETS, bytes(data))


def unsigned(value: int, width: int) -> bytes:
    """An unsigned integer in exactly ``width`` bytes (meters keep widths fixed)."""
    return _field(_UNSIGNED, value.to_bytes(width, "big", signed=False))


def signed(value: int, width: int) -> bytes:
    """A two's complement integer in exactly ``width`` bytes."""
    return _field(_SIGNED, value.to_bytes(width, "big", signed=True))


def sml_list(items: Iterable[bytes]) -> bytes:
    """A list of already encoded elements."""
    encoded = list(items)
    return type_length(_LIST, len(encoded)) + b"".join(encoded)


def sec_index(seconds: int) -> bytes:
    """An SML_Time of choice 1 (seconds since the meter started), as meters send it."""
    return sml_list([unsigned(1, 1), unsigned(seconds, 4)])


@dataclass(frozen=True)
class ListEntry:
    """One SML_ListEntry: a 6-byte OBIS code and an integer or octet-string value.

    Integers are written in ``width`` bytes, signed when ``is_signed``; ``unit`` is a DLMS
    unit code, ``scaler`` the power of ten, ``status`` a 4-byte status word.
    """

    obis: bytes
    value: int | bytes
    unit: int | None = None
    scaler: int | None = None
    status: int | None = None
    width: int = 8
    is_signed: bool = True

    def __post_init__(self) -> None:
        if len(self.obis) != 6:
            raise ValueError(f"an OBIS code has 6 bytes, not {len(self.obis)}")

    def encode(self) -> bytes:
        if isinstance(self.value, bytes):
            value = octet_string(self.value)
        elif self.is_signed:
            value = signed(self.value, self.width)
        else:
            value = unsigned(self.value, self.width)
        return sml_list(
            [
                octet_string(self.obis),
                ABSENT if self.status is None else unsigned(self.status, 4),
                ABSENT,  # valTime: MT175 sends none
                ABSENT if self.unit is None else unsigned(self.unit, 1),
                ABSENT if self.scaler is None else signed(self.scaler, 1),
                value,
                ABSENT,  # valueSignature
            ]
        )


def message(transaction_id: bytes, tag: int, body: bytes) -> bytes:
    """One SML_Message (groupNo 0, abortOnError 0) with its CRC-16/X-25, low byte first."""
    head = (
        type_length(_LIST, 6)
        + octet_string(transaction_id)
        + unsigned(0, 1)
        + unsigned(0, 1)
        + sml_list([unsigned(tag, 2), body])
    )
    register = crc16_x25(head)
    # The CRC is an Unsigned16 whose bytes are the register low byte first.
    return head + unsigned((register & 0xFF) << 8 | register >> 8, 2) + END_OF_MESSAGE


def public_open_res(server_id: bytes, req_file_id: bytes) -> bytes:
    return sml_list(
        [
            ABSENT,  # codepage
            ABSENT,  # clientId
            octet_string(req_file_id),
            octet_string(server_id),
            ABSENT,  # refTime
            ABSENT,  # smlVersion (MT175 leaves it out)
        ]
    )


def get_list_res(
    server_id: bytes, list_name: bytes, sensor_seconds: int, entries: Iterable[ListEntry]
) -> bytes:
    return sml_list(
        [
            ABSENT,  # clientId
            octet_string(server_id),
            octet_string(list_name),
            sec_index(sensor_seconds),
            sml_list(entry.encode() for entry in entries),
            ABSENT,  # listSignature
            ABSENT,  # actGatewayTime
        ]
    )


def public_close_res() -> bytes:
    return sml_list([ABSENT])  # no global signature


def escape(payload: bytes) -> bytes:
    """Every 1b1b1b1b in the messages is sent twice."""
    return payload.replace(ESCAPE, ESCAPE + ESCAPE)


def transport_frame(payload: bytes) -> bytes:
    """Start sequence, escaped messages, padding to a multiple of 4, end sequence, frame CRC."""
    body = escape(payload)
    padding = -len(body) % 4
    frame = START + body + bytes(padding) + ESCAPE + bytes((0x1A, padding))
    register = crc16_x25(frame)
    return frame + register.to_bytes(2, "little")


def push_frame(
    *,
    server_id: bytes,
    transaction: int,
    req_file_id: bytes,
    list_name: bytes,
    sensor_seconds: int,
    entries: Iterable[ListEntry],
) -> bytes:
    """One complete frame as a push meter sends it: PublicOpen.Res, GetList.Res and
    PublicClose.Res with transaction ids ``transaction`` .. ``transaction + 2``."""
    ids = [((transaction + offset) & 0xFFFFFFFF).to_bytes(4, "big") for offset in range(3)]
    payload = b"".join(
        (
            message(ids[0], MSG_PUBLIC_OPEN_RES, public_open_res(server_id, req_file_id)),
            message(
                ids[1],
                MSG_GET_LIST_RES,
                get_list_res(server_id, list_name, sensor_seconds, entries),
            ),
            message(ids[2], MSG_PUBLIC_CLOSE_RES, public_close_res()),
        )
    )
    return transport_frame(payload)
