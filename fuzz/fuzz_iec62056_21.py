"""atheris harness: the IEC 62056-21 mode C receivers and the parsers on arbitrary bytes.

Properties checked on every input (a violation is a crash the fuzzer reports):

* only ProtocolError (or its subclass ChecksumError) is raised on purpose; any other exception
  escapes and is reported;
* a mode C data block is returned only when the byte after ETX is the XOR of the bytes after
  STX up to ETX (checked here independently), and its text is exactly those bytes;
* the same bytes give the same result however they are split.

Run: ``.venv/bin/python fuzz/fuzz_iec62056_21.py [libFuzzer flags] [corpus dirs]``, or through
``fuzz/run.sh``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["iskra_me162"]):
    from iskra_me162.errors import ProtocolError
    from iskra_me162.protocols import iec62056_21 as iec

from _common import chunks, xor_bcc


def _mode_c(data: bytes) -> None:
    """Identification, then the data block, as the meter driver feeds them."""
    ident_rx = iec.IdentificationReceiver()
    try:
        for piece in chunks(data):
            ident_rx.feed(piece)
            if ident_rx.result() is not None:
                break
        ident = ident_rx.result()
    except ProtocolError:
        return
    if ident is None:
        return
    assert ident.raw.startswith(b"/"), ident
    iec.build_ack(ident, highspeed=True)
    iec.data_baudrate(ident, highspeed=True)


def _data_block(data: bytes) -> None:
    """DataReceiver alone on the bytes: a result only with a verified BCC."""
    receiver = iec.DataReceiver(ack=b"\x06050\r\n")
    block = None
    try:
        for piece in chunks(data):
            receiver.feed(piece)
            block = receiver.result()
            if block is not None:
                break
    except ProtocolError:
        return
    if block is None:
        return
    stx = data.index(iec.STX)
    etx = data.index(iec.ETX, stx + 1)
    assert etx + 1 < len(data), "a block without its BCC byte"
    assert xor_bcc(data[stx + 1 : etx + 1]) == data[etx + 1], "a block with a bad BCC"
    assert block.text == data[stx + 1 : etx].decode("latin-1")
    # The same bytes in one piece give the same block.
    whole = iec.DataReceiver()
    whole.feed(data[: etx + 2])
    assert whole.result() == block


def _parsers(data: bytes) -> None:
    text = data.decode("latin-1")
    for reading in iec.parse_data_lines(text):
        assert reading.raw is not None
    iec.parse_readout(data)  # documented never to raise


def test_one_input(data: bytes) -> None:
    _mode_c(data)
    _data_block(data)
    _parsers(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
