"""CRC-16 checks of SML: X-25 (the standard) and Kermit (some Holley meters), either byte order.

Both CRCs use the reflected CCITT polynomial (0x8408); they differ only in the start value and
the final XOR (X-25: 0xFFFF/0xFFFF, Kermit: 0x0000/0x0000). The standard stores the X-25 value
low byte first. Holley meters were seen sending Kermit, high byte first; we accept every
combination so that such meters work without configuration, and report which one matched.

The standard library has the CCITT CRC only MSB-first (``binascii.crc_hqx``). A reflected CRC
over some bytes is the bit-reversed MSB-first CRC over the bit-reversed bytes, with the start
value bit-reversed too (0x0000 and 0xFFFF are their own mirror image), so both CRCs are computed
that way: the bytes reversed with one ``bytes.translate``, the register reversed at the end.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Iterable

CRC_X25_LSB_FIRST = "x25/lsb-first"  # SML 1.04 as written: X-25, low byte first
CRC_X25_MSB_FIRST = "x25/msb-first"
CRC_KERMIT_LSB_FIRST = "kermit/lsb-first"
CRC_KERMIT_MSB_FIRST = "kermit/msb-first"  # Holley (e.g. 0a01484c5902000159bb)

# In the order they are tried: the standard first.
CRC_VARIANTS: tuple[str, ...] = (
    CRC_X25_LSB_FIRST,
    CRC_KERMIT_MSB_FIRST,
    CRC_X25_MSB_FIRST,
    CRC_KERMIT_LSB_FIRST,
)

# _BIT_REVERSED[b] is b with its 8 bits in the opposite order.
_BIT_REVERSED = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))


def _reflected_crc(data: bytes | bytearray | memoryview, start: int) -> int:
    """The reflected CCITT CRC register of ``data`` from ``start`` (0x0000 or 0xFFFF)."""
    register = crc_hqx(bytes(data).translate(_BIT_REVERSED), start)
    return _BIT_REVERSED[register & 0xFF] << 8 | _BIT_REVERSED[register >> 8]


def crc16_kermit(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/KERMIT register (check value of b"123456789" is 0x2189)."""
    return _reflected_crc(data, 0x0000)


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 register (check value of b"123456789" is 0x906E)."""
    return _reflected_crc(data, 0xFFFF) ^ 0xFFFF


def _swap(value: int) -> int:
    return (value & 0xFF) << 8 | value >> 8


def crc_candidates(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """For every variant, the 16-bit number whose big-endian bytes the sender would transmit.

    "lsb-first" variants are byte-swapped here, so comparing with
    ``int.from_bytes(received_two_bytes, "big")`` works for all four.
    """
    x25 = crc16_x25(data)
    kermit = crc16_kermit(data)
    return {
        CRC_X25_LSB_FIRST: _swap(x25),
        CRC_KERMIT_MSB_FIRST: kermit,
        CRC_X25_MSB_FIRST: x25,
        CRC_KERMIT_LSB_FIRST: _swap(kermit),
    }


def match_crc(
    data: bytes | bytearray | memoryview,
    received: int,
    variants: Iterable[str] = CRC_VARIANTS,
) -> str | None:
    """The first of ``variants`` under which ``received`` (the two CRC bytes read big-endian)
    is the CRC of ``data``, or None when none matches."""
    candidates = crc_candidates(data)
    for variant in variants:
        if candidates[variant] == received:
            return variant
    return None


def crc_matches_any(data: bytes | bytearray | memoryview, received: int) -> bool:
    """Whether ``received`` is the CRC of ``data`` under any variant (message CRCs)."""
    return match_crc(data, received) is not None
