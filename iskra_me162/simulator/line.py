"""The optical line between meter and IR head: byte timing and what a mismatched UART hears.

Mode C talks 7E1 (start bit, 7 data bits, even parity, stop bit: 10 bit times per character).
When the two ends disagree on the baud rate, a real UART does not lose the bytes quietly: it
samples the other side's bit stream at its own rate and delivers whatever characters that
produces (mostly NULs when it listens too fast, a few odd characters when it listens too slow).
:func:`garble` reproduces that bit by bit, so a reader that got its baud switch wrong sees the
same kind of garbage it would see on a real meter.
"""

from __future__ import annotations

import math

FRAME_BITS = 10  # start + 7 data + even parity + stop


def byte_time(baud: int, speedup: float = 1.0) -> float:
    """Seconds one 7E1 character occupies the line; 0 when ``speedup`` is infinite (no pacing)."""
    if math.isinf(speedup):
        return 0.0
    return FRAME_BITS / (baud * speedup)


def with_parity_bit(data: bytes) -> bytes:
    """Each 7-bit character with its even-parity bit in bit 7: what an 8N1 reader of 7E1 sees."""
    return bytes((byte & 0x7F) | (_parity(byte & 0x7F) << 7) for byte in data)


def _parity(value: int) -> int:
    return value.bit_count() & 1


def _line_levels(data: bytes) -> bytearray:
    """The 7E1 bit stream of ``data`` as line levels (1 = mark/idle, 0 = space)."""
    levels = bytearray()
    for byte in data:
        char = byte & 0x7F
        levels.append(0)
        levels.extend((char >> bit) & 1 for bit in range(7))
        levels.append(_parity(char))
        levels.append(1)
    return levels


def garble(data: bytes, sent_baud: int, heard_baud: int) -> bytes:
    """What a 7E1 receiver at ``heard_baud`` delivers for ``data`` sent 7E1 at ``sent_baud``.

    The line is idle (mark) before and after ``data``. The receiver waits for a low level,
    checks the start bit in its middle (a glitch shorter than half a bit is ignored), samples
    data and parity bits in their middles and delivers the 7 data bits even when the parity or
    stop bit is wrong, as Linux does by default. Equal rates give ``data`` back unchanged.
    """
    if sent_baud == heard_baud:
        return bytes(data)
    if sent_baud <= 0 or heard_baud <= 0:
        return b""
    levels = _line_levels(data)
    count = len(levels)
    # Integer time in units of 1 / (2 * sent * heard) s: a sent bit is 2*heard units, half a
    # received bit is sent units, so every sampling instant is exact and nothing drifts.
    sent_bit = 2 * heard_baud
    half_heard_bit = sent_baud

    def level(instant: int) -> int:
        index = instant // sent_bit
        return levels[index] if index < count else 1

    heard = bytearray()
    search_from = 0
    while True:
        index = search_from // sent_bit
        while index < count and levels[index]:
            index += 1
        if index >= count:
            break
        start = max(search_from, index * sent_bit)
        # Bit j of the received frame (0 = start, 1..7 data, 8 parity, 9 stop) is sampled here.
        if level(start + half_heard_bit):
            search_from = start + half_heard_bit  # false start: keep looking from the sample
            continue
        char = 0
        for bit in range(7):
            char |= level(start + (2 * (bit + 1) + 1) * half_heard_bit) << bit
        heard.append(char)
        search_from = start + (2 * 9 + 1) * half_heard_bit  # middle of the stop bit
    return bytes(heard)
