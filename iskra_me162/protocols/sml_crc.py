"""CRC-16 checks of SML: X-25 (the standard) and Kermit (some Holley meters), either byte order.

Both CRCs use the reflected CCITT polynomial (0x8408); they differ only in the start value and
the final XOR (X-25: 0xFFFF/0xFFFF, Kermit: 0x0000/0x0000). The standard stores the X-25 value
low byte first. Holley meters were seen sending Kermit, high byte first; we accept every
combination so that such meters work without configuration, and report which one matched.

Speed: instead of a Python loop over a 256-entry table, the bytes are bit-reversed with one
``bytes.translate`` (a precomputed 256-entry table, C speed) and fed to ``binascii.crc_hqx``,
the MSB-first CCITT CRC in C. A reflected CRC over data equals the bit-reversed MSB-first CRC
over bit-reversed data (start values 0x0000 and 0xFFFF are their own mirror image), so one
pass gives the Kermit register and the X-25 register follows from linearity without a second
pass. About 2 µs for a 500-byte frame instead of ~30 µs for a table loop.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Iterable
from functools import lru_cache

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


def _reverse16(value: int) -> int:
    return _BIT_REVERSED[value & 0xFF] << 8 | _BIT_REVERSED[value >> 8]


def crc16_kermit(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/KERMIT register (check value of b"123456789" is 0x2189)."""
    register = crc_hqx(bytes(data).translate(_BIT_REVERSED), 0)
    return _BIT_REVERSED[register & 0xFF] << 8 | _BIT_REVERSED[register >> 8]  # _reverse16


@lru_cache(maxsize=1024)
def _x25_offset(length: int) -> int:
    """What start value 0xFFFF and final XOR 0xFFFF add to the Kermit register of ``length``
    bytes: the CRC is linear, so X-25(data) == Kermit(data) ^ _x25_offset(len(data)).

    Cached because a meter sends frames and messages of (nearly) the same lengths every time.
    Room for many lengths (ints, a few dozen kB at most): a stream that cycles through more
    lengths than the cache holds would miss every time and pay a CRC over that many zeros.
    """
    # Kermit's register over zero bytes stays 0, so only the start value 0xFFFF contributes.
    return _reverse16(crc_hqx(bytes(length), 0xFFFF)) ^ 0xFFFF


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 register (check value of b"123456789" is 0x906E)."""
    return crc16_kermit(data) ^ _x25_offset(len(data))


def _swap(value: int) -> int:
    return (value & 0xFF) << 8 | value >> 8


def crc_candidates(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """For every variant, the 16-bit number whose big-endian bytes the sender would transmit.

    "lsb-first" variants are byte-swapped here, so comparing with
    ``int.from_bytes(received_two_bytes, "big")`` works for all four.
    """
    kermit = crc16_kermit(data)
    x25 = kermit ^ _x25_offset(len(data))
    return {
        CRC_X25_LSB_FIRST: _swap(x25),
        CRC_KERMIT_MSB_FIRST: kermit,
        CRC_X25_MSB_FIRST: x25,
        CRC_KERMIT_LSB_FIRST: _swap(kermit),
    }


def crc_matches_any(data: bytes | bytearray | memoryview, received: int) -> bool:
    """Whether ``received`` is the CRC of ``data`` under any variant (message CRCs)."""
    reversed_data = bit_reversed(data)
    return crc_matches_any_reversed(reversed_data, 0, len(reversed_data), received)


def bit_reversed(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` with the bits of every byte in the opposite order, for
    :func:`crc_matches_any_reversed`."""
    return bytes(data).translate(_BIT_REVERSED)


def crc_matches_any_reversed(reversed_data: bytes, begin: int, end: int, received: int) -> bool:
    """``crc_matches_any(data[begin:end], received)`` where ``reversed_data`` is
    ``bit_reversed(data)``.

    Speed: a frame holds several messages, each with its own CRC. Reversing the whole payload
    once and checking slices of it saves a copy and a translate per message, and the
    arithmetic is inline: this is 0.5 us per message instead of 1 us.
    """
    register = crc_hqx(reversed_data[begin:end], 0)
    kermit = _BIT_REVERSED[register & 0xFF] << 8 | _BIT_REVERSED[register >> 8]
    x25 = kermit ^ _x25_offset(end - begin)
    if received in (x25, kermit):
        return True
    # received == _swap(crc) is the same test as _swap(received) == crc for 16-bit numbers.
    return 0 <= received <= 0xFFFF and ((received & 0xFF) << 8 | received >> 8) in (x25, kermit)


# Per variant: which register (0 X-25, 1 Kermit) and whether it is sent low byte first.
_LAYOUT = {
    CRC_X25_LSB_FIRST: (0, True),
    CRC_KERMIT_MSB_FIRST: (1, False),
    CRC_X25_MSB_FIRST: (0, False),
    CRC_KERMIT_LSB_FIRST: (1, True),
}


def match_crc(
    data: bytes | bytearray | memoryview,
    received: int,
    variants: Iterable[str] = CRC_VARIANTS,
) -> str | None:
    """The first of ``variants`` under which ``received`` (the two CRC bytes read big-endian)
    is the CRC of ``data``, or None when none matches.

    Once per frame: rather than building every candidate (crc_candidates), the received
    number is swapped once and compared with the register the variant names.
    """
    if not 0 <= received <= 0xFFFF:
        return None
    kermit = crc16_kermit(data)
    registers = (kermit ^ _x25_offset(len(data)), kermit)
    swapped = _swap(received)
    for variant in variants:
        which, lsb_first = _LAYOUT[variant]
        if registers[which] == (swapped if lsb_first else received):
            return variant
    return None
