"""atheris harness: the SML transport reader and message decoder on arbitrary bytes.

Properties checked on every input (a violation is a crash the fuzzer reports):

* the stream reader never raises, whatever it is fed;
* every frame it returns carries a valid X-25 or Kermit CRC in its last two bytes (checked
  here independently, bit by bit), starts with the start sequence and converts to a Readout
  without any exception but ProtocolError;
* the bare message decoder raises nothing but ProtocolError (ChecksumError with ``strict``);
* the same bytes give the same frames however they are split, and the buffer stays bounded.

Run: ``.venv/bin/python fuzz/fuzz_sml.py [libFuzzer flags] [corpus dirs]``, or through
``fuzz/run.sh``.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports(include=["iskra_me162"]):
    from iskra_me162.errors import ProtocolError
    from iskra_me162.protocols import sml

from _common import chunks, sml_frame_crc_ok

START = b"\x1b\x1b\x1b\x1b\x01\x01\x01\x01"
MAX_BUFFER = 4096  # small, so that the overflow paths are reached too
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def _frames(data: bytes, split: bool) -> list[bytes]:
    reader = sml.SmlStreamReader(max_buffer=MAX_BUFFER)
    found: list[bytes] = []
    whole = (data[i : i + MAX_BUFFER] for i in range(0, len(data), MAX_BUFFER))
    pieces = chunks(data) if split else whole
    for piece in pieces:
        reader.add(piece)
        for frame in reader.frames():
            raw = frame.raw
            assert raw.startswith(START), raw[:16].hex()
            assert sml_frame_crc_ok(raw), f"frame with a bad CRC returned: {raw.hex()}"
            try:
                readout = sml.frame_to_readout(frame, WHEN, 1.0)
            except ProtocolError:
                pass
            else:
                for reading in readout.readings:
                    assert reading.value is None or reading.value.is_finite()
            found.append(raw)
        assert reader.buffered <= MAX_BUFFER, reader.buffered
    return found


def test_one_input(data: bytes) -> None:
    split = _frames(data, split=True)
    whole = _frames(data, split=False)
    if len(data) <= MAX_BUFFER:
        # With no overflow, the chunking must not change what is found.
        assert split == whole, (len(split), len(whole))
    for strict in (False, True):
        with contextlib.suppress(ProtocolError):
            sml.decode_bare_messages(data, strict=strict)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
