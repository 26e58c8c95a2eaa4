"""SML transport protocol version 1: find frames in a byte stream, check their CRC, un-escape.

A frame on the wire::

    1b1b1b1b 01010101   start sequence
    ...                 the SML messages, with every 1b1b1b1b in them sent twice
    00 * pp             padding so that the end sequence starts 4-byte aligned (0..3 bytes;
                        DZG meters send 4 on an aligned payload, so any count that fits is taken)
    1b1b1b1b 1a pp c1c2 end sequence: padding count, CRC-16 over everything before c1

Sans-I/O: :meth:`SmlTransportReader.add` takes whatever the port delivered,
:meth:`SmlTransportReader.next_frame` hands out checked frames. Nothing here reads a port or a
clock, so a test can drive every case with byte strings.

Escapes. Four 0x1b bytes followed by four more are payload bytes 1b1b1b1b, wherever they
occur; an aligned 1b1b1b1b followed by 0x1a starts the end sequence; 1b1b1b1b 01010101 is the
next frame's start (the current one was cut short and is dropped). Four 0x1b at an aligned
position followed by anything else cannot occur in a well-formed frame: the frame is dropped.
Unaligned 1b1b1b1b not followed by a known escape are payload bytes (senders that only escape
aligned blocks). The search uses ``bytearray.find``, so an escape costs one C call, not a
Python loop over every byte.

One ambiguity: a frame cut inside a doubled escape and followed by the next start reads as
0x1b bytes and 01010101, exactly like payload 1b1b1b1b 01010101. The reader takes the payload
reading and remembers the place; when the frame then fails (bad CRC, bad escape, an unaligned
end that fits the remembered start, another start) it goes back there, so the next frame is
not lost. Which failure is counted waits for the outcome: when the frame begun at the
remembered place checks out, the first one was cut short (``truncated``); when it fails too,
the first one is counted by its own failure (a damaged frame with 1b1b1b1b 01010101 in its
payload is a CRC error, not two cut frames).

The CRC covers the raw bytes from the start sequence through the padding count, so it is
checked before un-escaping. It is the one authoritative check for framed data: a frame whose
CRC matches none of the accepted variants (see :mod:`sml_crc`) is dropped and counted, never
decoded. After a bad CRC the 3 bytes after 1b1b1b1b 1a are searched again: a frame cut inside
its end sequence must not take the next frame's start with it.

Memory is bounded: the buffer never holds more than ``max_buffer`` bytes (64 kB by default,
some 100 frames of a household meter). When :meth:`add` would exceed it, the oldest bytes go:
everything before the newest frame start, and if that one frame alone is over the limit (no
real meter sends such frames: it is noise with a start sequence in it), all of it except the
last 7 bytes. Each such event counts in ``overflows`` and the bytes in ``dropped_bytes`` and
is logged as a warning; a caller that drains :meth:`next_frame` after every :meth:`add` of at
most ``max_buffer`` bytes never loses a good frame to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from iskra_me162.protocols.sml_crc import CRC_VARIANTS, match_crc

logger = logging.getLogger(__name__)

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
_START_TAIL = b"\x01\x01\x01\x01"
_END_MARK = 0x1A
DEFAULT_MAX_BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class TransportFrame:
    """One frame whose CRC matched.

    ``raw`` is the frame exactly as received (start sequence through CRC), ``payload`` the SML
    messages in it (escapes undone, padding removed), ``crc_variant`` the CRC that matched
    (one of :data:`sml_crc.CRC_VARIANTS`).
    """

    raw: bytes
    payload: bytes
    crc_variant: str


def _start_inside_escape(buf: bytearray, pos: int) -> int | None:
    """Where a start sequence could begin inside the data escape at ``pos``.

    1b1b1b1b 1b1b1b1b followed by 0..3 more 0x1b and 01010101 is either payload (the sender
    escaped 1b..1b 01010101) or a frame cut inside a run of 0x1b and followed by the next
    frame's start. Only the CRC can tell: the place is remembered and used when the frame
    fails. (Four or more further 0x1b are another escape and are looked at there.)
    """
    for extra in range(4):
        tail = pos + 8 + extra
        if buf[tail : tail + 4] == _START_TAIL:
            return tail - 4
        if buf[tail] != 0x1B:
            return None
    return None


class SmlTransportReader:
    """Incremental SML transport v1 frame finder.

    Counters (all only grow): ``frames`` good frames handed out, ``crc_errors`` complete frames
    with a wrong CRC, ``malformed`` frames with an impossible escape sequence or a padding count
    larger than the frame, ``truncated`` frames cut short by the next start sequence,
    ``overflows`` buffer overflows, ``dropped_bytes`` bytes that did not end up in a good
    frame (garbage between frames and every byte of a dropped frame).
    """

    def __init__(
        self,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        crc_variants: Iterable[str] = CRC_VARIANTS,
    ) -> None:
        variants = tuple(crc_variants)
        unknown = [variant for variant in variants if variant not in CRC_VARIANTS]
        if unknown or not variants:
            raise ValueError(f"unknown CRC variants {unknown}; choose from {CRC_VARIANTS}")
        if max_buffer < 64:
            raise ValueError(f"max_buffer {max_buffer} is too small for any SML frame")
        self.max_buffer = max_buffer
        self.crc_variants = variants
        self.frames = 0
        self.crc_errors = 0
        self.malformed = 0
        self.truncated = 0
        self.overflows = 0
        self.dropped_bytes = 0
        self._buf = bytearray()
        # While a frame start sits at self._buf[0]: where to continue looking for escapes,
        # where the data escapes (1b1b1b1b 1b1b1b1b) seen so far begin, and where a start
        # sequence may hide inside one of them (see _start_inside_escape).
        self._in_frame = False
        self._scan = 0
        self._escapes: list[int] = []
        self._restart: int | None = None
        # A frame given up for a start sequence inside it, whose failure (counter name, log
        # text, length) is counted once the frame begun there succeeds or fails.
        self._pending: tuple[str, str, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes as they came from the port (any chunking)."""
        self._buf += data
        if len(self._buf) > self.max_buffer:
            self._overflow()

    def next_frame(self) -> TransportFrame | None:
        """The next frame with a good CRC, or None until more bytes are needed."""
        buf = self._buf
        while True:
            if not self._in_frame:
                start = buf.find(START)
                if start < 0:
                    # Keep a tail that may be the first bytes of a start sequence.
                    self._drop(max(0, len(buf) - (len(START) - 1)))
                    return None
                if start:
                    self._drop(start)
                self._begin_frame()
            pos = buf.find(ESCAPE, self._scan)
            if pos < 0:
                # The last 3 bytes may be the beginning of an escape: look at them again.
                self._scan = max(len(START), len(buf) - (len(ESCAPE) - 1))
                return None
            if pos + 8 > len(buf):
                self._scan = pos
                return None
            if buf[pos + 4] == _END_MARK and pos % 4 == 0:
                # The end sequence (asked first: every frame has one, few have other escapes).
                frame = self._finish(pos)
                if frame is not None:
                    return frame
                continue
            follower = bytes(buf[pos + 4 : pos + 8])
            if follower == ESCAPE:
                if pos + 15 > len(buf):
                    self._scan = pos  # decide once the bytes that may hold a start are in
                    return None
                if self._restart is None:
                    self._restart = _start_inside_escape(buf, pos)
                self._escapes.append(pos)
                self._scan = pos + 8
            elif follower == _START_TAIL:
                if not self._restart_at_candidate():
                    if not self._settle(confirmed=False):
                        logger.info("SML frame cut short after %d bytes by the next start", pos)
                        self.truncated += 1
                    self._drop(pos)
                    self._begin_frame()
            elif pos % 4 == 0:
                text = f"SML frame dropped: unknown escape sequence {follower.hex()}"
                if not self._restart_at_candidate(("malformed", text)):
                    if not self._settle(confirmed=False):
                        logger.info(text)
                        self.malformed += 1
                    self._drop(pos)
                    self._in_frame = False
            elif (
                follower[0] == _END_MARK
                and self._restart is not None
                and (pos - self._restart) % 4 == 0
            ):
                # The end of a frame that began at the remembered start: so that was one.
                self._restart_at_candidate()
            else:
                # Payload bytes that happen to be 0x1b (unaligned, not an escape): skip one.
                self._scan = pos + 1

    def _begin_frame(self) -> None:
        self._in_frame = True
        self._scan = len(START)
        self._escapes = []
        self._restart = None

    def _restart_at_candidate(self, failure: tuple[str, str] | None = None) -> bool:
        """After a failed frame: if it contained 1b1b1b1b 1b1b1b1b 01010101, that may have been
        a cut frame followed by a new start after all; continue from there.

        ``failure`` (counter name, log text) is how the frame failed when that alone proves
        nothing (bad CRC, bad escape): it is counted once the new frame shows which it was
        (see :meth:`_settle`). None means the new start is certain (cut short).
        """
        restart = self._restart
        if restart is None:
            return False
        self._settle(confirmed=False)  # a frame begun at a guess that fails was no frame
        if failure is None:
            logger.info("SML frame cut short after %d bytes by the next start sequence", restart)
            self.truncated += 1
        else:
            logger.debug("%s; trying the start sequence %d bytes into it", failure[1], restart)
            self._pending = (*failure, restart)
        self._drop(restart)
        self._begin_frame()
        return True

    def _settle(self, confirmed: bool) -> bool:
        """Count the frame given up for a start sequence inside it: cut short when the frame
        begun there checked out (``confirmed``), else by its own failure. Returns whether
        there was one, i.e. whether the frame now ending was begun at a guess."""
        pending = self._pending
        if pending is None:
            return False
        self._pending = None
        counter, text, length = pending
        if confirmed:
            logger.info("SML frame cut short after %d bytes by the next start sequence", length)
            self.truncated += 1
        else:
            logger.info("%s", text)
            setattr(self, counter, getattr(self, counter) + 1)
        return True

    def _finish(self, end_pos: int) -> TransportFrame | None:
        """Cut the frame whose end sequence starts at ``end_pos`` and check it."""
        raw = bytes(self._buf[: end_pos + 8])
        escapes = self._escapes
        received = raw[-2] << 8 | raw[-1]
        variant = match_crc(raw[:-2], received, self.crc_variants)
        if variant is None:
            logger.debug("frame with bad CRC: %s", raw.hex())
            text = f"SML frame of {len(raw)} bytes dropped: CRC {received:04x} does not match"
            if self._restart_at_candidate(("crc_errors", text)):
                return None
            self._in_frame = False
            if not self._settle(confirmed=False):
                self.crc_errors += 1
                logger.info("%s", text)
            # Keep the 3 bytes after 1b1b1b1b 1a: when the frame was cut inside its end
            # sequence they hold the start of the next frame, which must not be lost.
            self._drop(end_pos + 5)
            return None
        if self._pending is not None:
            self._settle(confirmed=True)
        del self._buf[: end_pos + 8]
        self._in_frame = False
        padding = raw[-3]
        if escapes:
            pieces = []
            begin = len(START)
            for escape in escapes:
                pieces.append(raw[begin : escape + 4])  # keep one of the two escapes
                begin = escape + 8
            pieces.append(raw[begin:end_pos])
            payload = b"".join(pieces)
        else:
            payload = raw[len(START) : end_pos]
        # 0..3 by the standard, but DZG meters send 4 on an already aligned payload: any
        # count that fits is taken (the CRC vouches for the bytes; the message decoder
        # notices if a count cut into the messages).
        if padding > len(payload):
            self.malformed += 1
            self.dropped_bytes += len(raw)
            logger.info("SML frame dropped: %d padding bytes announced", padding)
            return None
        self.frames += 1
        return TransportFrame(raw, payload[: len(payload) - padding], variant)

    def _drop(self, count: int) -> None:
        if count > 0:
            del self._buf[:count]
            self.dropped_bytes += count

    def _overflow(self) -> None:
        self.overflows += 1
        last_start = self._buf.rfind(START)
        if last_start > 0:
            self._drop(last_start)
        if len(self._buf) > self.max_buffer:
            self._drop(len(self._buf) - (len(START) - 1))
        self._settle(confirmed=False)
        logger.warning(
            "SML input buffer over %d bytes: oldest data dropped (%d bytes dropped so far)",
            self.max_buffer,
            self.dropped_bytes,
        )
        self._in_frame = False
