"""SML push meters (Smart Message Language 1.04 over transport v1): bytes in, Readout out.

Three layers, one module each, all sans-I/O (no port, no clock):

- :mod:`sml_transport` finds frames in the byte stream, checks the frame CRC (X-25 or Kermit,
  either byte order, detected per frame), undoes the escapes and padding;
- :mod:`sml_messages` decodes the SML messages inside (PublicOpen.Res, GetList.Res,
  PublicClose.Res; other types are skipped) into frozen dataclasses;
- this module ties them together (:class:`SmlStreamReader`, :class:`SmlFrame`) and turns a
  frame into the project's :class:`~iskra_me162.readout.Readout` (:func:`frame_to_readout`).

Which checksum counts. For framed data the transport CRC is authoritative: a frame with a bad
frame CRC is dropped and counted, never decoded, while the per-message CRCs inside a good frame
are only reported (:attr:`SmlMessage.crc_ok`), because real meters (eBZ DD3, EMH with masked
server ids) send wrong message CRCs in frames whose frame CRC is right. Bare message sequences
(:func:`decode_messages`, :func:`decode_bare_messages`; files stored without the transport)
have no frame CRC: nothing vouches for them except the message CRCs, which are reported, and
enforced only on request (``strict=True``) because the same meters get them wrong.

Values. An integer value becomes ``value * 10**scaler`` as an exact ``Decimal`` in the DLMS
unit of the entry (30 -> "Wh", 27 -> "W", 35 -> "V", 33 -> "A", 44 -> "Hz", 8 -> "deg", ...;
``None`` without a unit, e.g. status words). Every entry also gets a readable ``raw`` text:
octet strings as ASCII when printable (``EMH``), else lowercase hex (ids, keys); numbers in
decimal; list values as their typed elements (``[('uint', 1), ('list', [...])]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from iskra_me162.errors import ProtocolError
from iskra_me162.obis import ObisCode, Reading
from iskra_me162.protocols.sml_crc import CRC_VARIANTS
from iskra_me162.protocols.sml_messages import (
    DLMS_UNITS,
    SmlGetListRes,
    SmlListEntry,
    SmlMessage,
    SmlPublicCloseRes,
    SmlPublicOpenRes,
    SmlTime,
    decode_messages,
    unit_name,
)
from iskra_me162.protocols.sml_transport import DEFAULT_MAX_BUFFER, SmlTransportReader
from iskra_me162.readout import MeterIdentity, Readout

__all__ = [
    "CRC_VARIANTS",
    "DLMS_UNITS",
    "SmlFrame",
    "SmlGetListRes",
    "SmlListEntry",
    "SmlMessage",
    "SmlPublicCloseRes",
    "SmlPublicOpenRes",
    "SmlStreamReader",
    "SmlTime",
    "decode_bare_messages",
    "decode_messages",
    "frame_to_readout",
    "unit_name",
]

logger = logging.getLogger(__name__)

# Entries that carry the three-letter manufacturer flag ("EMH", "ISK"); the first in the frame
# wins, and only when neither is there does the server id tell.
_MANUFACTURER_OBIS = (
    bytes((129, 129, 199, 130, 3, 255)),  # 129-129:199.130.3*255, older meters
    bytes((1, 0, 96, 50, 1, 1)),  # 1-0:96.50.1*1, FNN/BSI meters
)


@dataclass(frozen=True, slots=True)
class SmlFrame:
    """The decoded messages of one frame.

    ``crc_variant`` names the frame CRC that matched (see :data:`CRC_VARIANTS`), ``""`` for
    bare messages that had no frame. ``raw`` is the frame as received (``b""`` for bare
    messages).
    """

    messages: tuple[SmlMessage, ...]
    crc_variant: str = ""
    raw: bytes = field(default=b"", repr=False)

    @property
    def entries(self) -> tuple[SmlListEntry, ...]:
        """The list entries of all GetList.Res messages, in order."""
        return tuple(
            entry
            for message in self.messages
            if isinstance(message.body, SmlGetListRes)
            for entry in message.body.entries
        )

    @property
    def server_id(self) -> bytes | None:
        """The first GetList.Res server id, else the first PublicOpen.Res one."""
        for kind in (SmlGetListRes, SmlPublicOpenRes):
            for message in self.messages:
                if isinstance(message.body, kind) and message.body.server_id is not None:
                    return message.body.server_id
        return None


def decode_bare_messages(
    payload: bytes | bytearray | memoryview, *, strict: bool = False
) -> SmlFrame:
    """A frame from bare SML messages without transport (``crc_variant == ""``).

    Raises :class:`ProtocolError` for malformed data and, with ``strict=True``,
    :class:`ChecksumError` for a message whose CRC does not match.
    """
    return SmlFrame(decode_messages(payload, strict=strict))


class SmlStreamReader:
    """Feed it bytes as they arrive (:meth:`add`), take decoded frames (:meth:`get_frame`).

    Frames with a bad CRC or undecodable messages are dropped and counted, never returned; the
    reader then carries on with the next frame. Call :meth:`get_frame` until it returns None
    after every :meth:`add` (or iterate :meth:`frames`): the buffer is bounded to
    ``max_buffer`` bytes and overflow drops the oldest data (see :mod:`sml_transport`).

    ``crc_variants`` limits the accepted frame CRCs (default: all four of
    :data:`CRC_VARIANTS`; a user whose meter is known may pin one and so lower the chance that
    a damaged frame passes by accident from about 4 in 65536 to 1 in 65536).
    """

    def __init__(
        self,
        *,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        crc_variants: Iterable[str] = CRC_VARIANTS,
    ) -> None:
        self._transport = SmlTransportReader(max_buffer=max_buffer, crc_variants=crc_variants)
        self.frames_ok = 0
        self.decode_errors = 0
        self.last_decode_error: ProtocolError | None = None
        self._undecodable_bytes = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.add(data)

    def get_frame(self) -> SmlFrame | None:
        """The next good frame, or None until more bytes are needed."""
        while (frame := self._transport.next_frame()) is not None:
            try:
                messages = decode_messages(frame.payload)
            except ProtocolError as error:
                # A good CRC over undecodable content: a meter bug or a message type we
                # cannot walk. Drop it like a damaged frame, but say why.
                self.decode_errors += 1
                self.last_decode_error = error
                self._undecodable_bytes += len(frame.raw)
                logger.info("SML frame with a good CRC dropped: %s", error)
                logger.debug("undecodable frame: %s", frame.raw.hex())
                continue
            self.frames_ok += 1
            return SmlFrame(messages, frame.crc_variant, frame.raw)
        return None

    def frames(self) -> Iterator[SmlFrame]:
        """Every complete good frame buffered so far."""
        while (frame := self.get_frame()) is not None:
            yield frame

    @property
    def crc_errors(self) -> int:
        """Complete frames whose CRC matched no accepted variant."""
        return self._transport.crc_errors

    @property
    def malformed(self) -> int:
        """Frames with an impossible escape sequence or padding count."""
        return self._transport.malformed

    @property
    def truncated(self) -> int:
        """Frames cut short by the start of the next one."""
        return self._transport.truncated

    @property
    def overflows(self) -> int:
        """Times the buffer limit forced old data out."""
        return self._transport.overflows

    @property
    def dropped_bytes(self) -> int:
        """Bytes that did not end up in a returned frame (garbage, every dropped frame)."""
        return self._transport.dropped_bytes + self._undecodable_bytes

    @property
    def buffered(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return self._transport.buffered


def frame_to_readout(frame: SmlFrame, wall_time: datetime, monotonic: float) -> Readout:
    """The readings of ``frame`` as a :class:`Readout` taken at the caller's clock readings.

    ``wall_time`` must be an aware UTC datetime, ``monotonic`` the caller's
    ``time.monotonic()`` when the frame arrived (the protocol core reads no clocks). Entries
    whose objName is not a 6-byte OBIS code are left out (logged). Every other entry becomes a
    Reading: integers with their exact scaled value, everything else with ``value=None`` and
    the text in ``raw``. The identity: manufacturer from 129-129:199.130.3 or 1-0:96.50.1*1,
    else from the FLAG in the server id; model ``""`` (SML does not say); serial = server id
    in hex.
    """
    readings: list[Reading] = []
    manufacturer = ""
    for entry in frame.entries:
        if len(entry.obj_name) != 6:
            logger.debug("SML entry with a %d-byte objName skipped", len(entry.obj_name))
            continue
        code = ObisCode.from_bytes(entry.obj_name)
        readings.append(Reading(code, entry.scaled_value, entry.unit_name, entry.text))
        if not manufacturer and entry.obj_name in _MANUFACTURER_OBIS:
            manufacturer = _manufacturer_flag(entry.value)
    server_id = frame.server_id or b""
    if not manufacturer:
        manufacturer = _manufacturer_from_server_id(server_id)
    identity = MeterIdentity(manufacturer=manufacturer, model="", serial=server_id.hex())
    return Readout(
        identity=identity, readings=tuple(readings), wall_time=wall_time, monotonic=monotonic
    )


def _manufacturer_flag(value: object) -> str:
    if type(value) is bytes and value.isascii():
        text = value.decode("ascii").strip()
        if text.isprintable():
            return text
    return ""


def _manufacturer_from_server_id(server_id: bytes) -> str:
    """The FLAG letters of a DIN 43863-5 server id: ``0a 01 'EMH' 00 00a9476d`` -> ``EMH``."""
    if len(server_id) == 10:
        flag = server_id[2:5]
        if flag.isalpha() and flag.isupper():
            return flag.decode("ascii")
    return ""
