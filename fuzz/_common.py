"""Shared pieces of the atheris harnesses: independent checksum oracles and input splitting.

The oracles are written here from the specifications, not imported from the code under test,
so a bug in the project's own checksum code cannot hide a bug in the receivers.
"""

from __future__ import annotations

from collections.abc import Iterator


def xor_bcc(data: bytes) -> int:
    """IEC 62056-21 block check character: XOR of the bytes after STX up to and including ETX."""
    result = 0
    for byte in data:
        result ^= byte
    return result


def _crc16_ccitt_reflected(data: bytes, init: int, xorout: int) -> int:
    crc = init
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ xorout


def sml_frame_crc_ok(raw: bytes) -> bool:
    """True when the last two bytes of an SML transport frame are its X-25 or Kermit CRC,
    in either byte order (the four variants real meters use)."""
    if len(raw) < 2:
        return False
    body, given = raw[:-2], raw[-2:]
    for init, xorout in ((0xFFFF, 0xFFFF), (0x0000, 0x0000)):  # X-25, Kermit
        crc = _crc16_ccitt_reflected(body, init, xorout)
        if given in (crc.to_bytes(2, "little"), crc.to_bytes(2, "big")):
            return True
    return False


def chunks(data: bytes) -> Iterator[bytes]:
    """``data`` cut into pieces whose sizes follow from the data itself (deterministic, so a
    crash reproduces from its input file alone): the first byte picks a pattern of sizes."""
    if not data:
        return
    pattern = (1, 2, 3, 5, 8, 13, 64, 4096)
    step = data[0] % len(pattern)
    pos = 0
    index = 0
    while pos < len(data):
        size = pattern[(step + index) % len(pattern)]
        yield data[pos : pos + size]
        pos += size
        index += 1
