"""Decoder throughput against the libraries people would otherwise use (issue #6, item 5).

Same inputs, same process, side by side: each round times our decoder over the whole input set,
then the peer over the same set; the best round of each counts (the usual way to take noise out
of a micro-benchmark), and the ratio is ours / theirs in items per second. Before any timing,
every input is decoded by both and the values compared: a disagreement is an error of the run.

* SML: our :class:`~iskra_me162.protocols.sml.SmlStreamReader` + ``frame_to_readout`` (exact
  Decimal values) against ``smllib`` (``SmlStreamReader`` + ``SmlFrame.parse_frame()``, the full
  decoder, and ``get_obis()`` + ``get_value()``, its shortcut that only looks for A = 1 codes),
  over every capture in ../shared/testdata/sml/, a generated stream of eHZ-like frames and a
  stream of the project's simulated ISKRA MT175 (simulator.sml_push).
* IEC 62056-21 mode C: our :class:`~iskra_me162.protocols.iec62056_21.DataReceiver` (BCC check,
  Decimal values) against ``iec62056-21``'s ``ReadoutDataMessage.from_bytes`` (BCC check,
  values left as strings) over the captures with a valid STX..BCC block and generated readouts
  of the simulated ME162 and MT174.
* DSMR P1: our generic :func:`~iskra_me162.protocols.iec62056_21.parse_readout` (which reads
  DSMR telegrams like any other readout and checks no CRC: the daemon reads no DSMR meter)
  against ``dsmr-parser``'s ``TelegramParser(V5, apply_checksum_validation=False).parse``
  over the four DSMR captures: both give every register with a ``Decimal`` value and its unit.

The figures are information, not goals to optimise for: the decoders are written the plain way
(one decode path each), and the only line held is that none falls below its peer (>= 1x).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from benchmarks.common import TESTDATA, Section
from iskra_me162.errors import ProtocolError
from iskra_me162.protocols import iec62056_21 as iec
from iskra_me162.protocols.sml import (
    SmlStreamReader,
    decode_bare_messages,
    frame_to_readout,
)
from iskra_me162.simulator.model import MeterConfig, MeterModel
from iskra_me162.simulator.profiles import ME162, MT174
from tests import sml_frames
from tests.sml_frames import Entry

BAD_SML = {"emh_issue912__tibberlink.bin"}  # frame CRC wrong: both refuse it (tested elsewhere)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Contest:
    """One decoder against one peer over one input set."""

    name: str
    unit: str  # what one item is: "frames", "readouts", "telegrams"
    items: int  # items decoded per pass over the inputs
    ours: Callable[[], object]
    theirs: Callable[[], object]
    goal: bool = True  # False: informative, no goal applies


def best_of(contest: Contest, rounds: int, min_time: float) -> tuple[float, float]:
    """Items per second (ours, theirs): alternating rounds, each at least ``min_time`` long."""

    def passes_for(function: Callable[[], object]) -> int:
        count = 1
        while True:
            start = time.perf_counter()
            for _ in range(count):
                function()
            if time.perf_counter() - start >= min_time:
                return count
            count *= 2

    ours_passes = passes_for(contest.ours)
    theirs_passes = passes_for(contest.theirs)
    best_ours = best_theirs = math.inf
    for _ in range(rounds):
        for function, passes, is_ours in (
            (contest.ours, ours_passes, True),
            (contest.theirs, theirs_passes, False),
        ):
            start = time.perf_counter()
            for _ in range(passes):
                function()
            per_pass = (time.perf_counter() - start) / passes
            if is_ours:
                best_ours = min(best_ours, per_pass)
            else:
                best_theirs = min(best_theirs, per_pass)
    return contest.items / best_ours, contest.items / best_theirs


# --- SML ----------------------------------------------------------------------------------------


def sml_captures() -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes]]]:
    """(framed captures with their CRC name for smllib, bare message captures)."""
    framed, bare = [], []
    for path in sorted((TESTDATA / "sml").glob("*.bin")):  # nothing when there is no test data
        if path.name in BAD_SML:
            continue
        data = path.read_bytes()
        if "_msgonly_" in path.name:
            bare.append((path.name, data))
        else:
            framed.append((path.name, data, "kermit" if "kermit" in path.name else "x25"))
    return framed, bare


def generated_sml(count: int, seed: int = 162) -> bytes:
    """``count`` frames as an eHZ pushes them every second: counters, power, ids."""
    rng = random.Random(seed)
    server_id = bytes.fromhex("0a01454d4800009d4b8f")
    stream = bytearray()
    import_wh = rng.randrange(10**9)
    for number in range(count):
        import_wh += rng.randrange(0, 500)
        power = rng.randrange(-3000, 9000)
        entries = [
            Entry("129-129:199.130.3*255", b"EMH"),
            Entry("1-0:0.0.9*255", server_id),
            Entry("1-0:1.8.0*255", import_wh * 10, unit=30, scaler=-1, status=0x182),
            Entry("1-0:1.8.1*255", import_wh * 10 // 3, unit=30, scaler=-1),
            Entry("1-0:1.8.2*255", import_wh * 20 // 3, unit=30, scaler=-1),
            Entry("1-0:2.8.0*255", rng.randrange(10**7), unit=30, scaler=-1),
            Entry("1-0:16.7.0*255", power, unit=27, scaler=0, signed=True, width=4),
            Entry("1-0:36.7.0*255", power // 3, unit=27, scaler=0, signed=True, width=4),
            Entry("1-0:32.7.0*255", 2300 + rng.randrange(-50, 50), unit=35, scaler=-1),
            Entry("129-129:199.130.5*255", bytes(rng.randrange(256) for _ in range(48))),
        ]
        stream += sml_frames.sml_frame(entries, server_id=server_id, sensor_time=number)
    return bytes(stream)


def simulated_mt175(count: int) -> bytes:
    """``count`` frames of the project's simulated ISKRA MT175 (simulator.sml_push), as pushed
    once a second: PublicOpen, GetList with 10 entries and a 48-byte public key, PublicClose."""
    from iskra_me162.simulator.sml_push import SmlPushConfig, SmlPushModel

    model = SmlPushModel(SmlPushConfig(import_w=1850, speedup=math.inf), now=0.0)
    stream = bytearray()
    for second in range(1, count + 1):
        for push in model.pushes_due(float(second)):
            stream += push.transmission.data
    return bytes(stream)


CHUNK = 4096  # bytes per add(): what a serial read hands over at most, well under the buffer cap


def ours_sml_stream(data: bytes) -> list:
    reader = SmlStreamReader()
    readouts = []
    for offset in range(0, len(data), CHUNK):
        reader.add(data[offset : offset + CHUNK])
        readouts.extend(frame_to_readout(frame, NOW, 0.0) for frame in reader.frames())
    return readouts


def _lib_reader(crc: str) -> Any:
    from smllib import SmlStreamReader as LibReader

    return LibReader(crc=crc)


def theirs_sml_stream_full(data: bytes, crc: str) -> list:
    """smllib's full decoder: every message parsed, list entries scaled."""
    from smllib.sml import SmlGetListResponse

    reader = _lib_reader(crc)
    results = []
    for offset in range(0, len(data), CHUNK):
        reader.add(data[offset : offset + CHUNK])
        while (frame := reader.get_frame()) is not None:
            values = []
            for message in frame.parse_frame():
                body = message.message_body
                if isinstance(body, SmlGetListResponse):
                    values.extend((entry.obis, entry.get_value()) for entry in body.val_list)
            results.append(values)
    return results


def theirs_sml_stream_obis(data: bytes, crc: str) -> list:
    """smllib's shortcut: get_obis() finds the A = 1 entries without parsing the messages."""
    reader = _lib_reader(crc)
    results = []
    for offset in range(0, len(data), CHUNK):
        reader.add(data[offset : offset + CHUNK])
        while (frame := reader.get_frame()) is not None:
            results.append([(entry.obis, entry.get_value()) for entry in frame.get_obis()])
    return results


def ours_sml_bare(data: bytes) -> object:
    return frame_to_readout(decode_bare_messages(data), NOW, 0.0)


def theirs_sml_bare(data: bytes) -> list:
    from smllib.sml import SmlGetListResponse
    from smllib.sml_frame import SmlFrame as LibFrame

    values = []
    for message in LibFrame(data).parse_frame():
        if isinstance(message.message_body, SmlGetListResponse):
            values.extend((e.obis, e.get_value()) for e in message.message_body.val_list)
    return values


def _compare_sml(readouts: Sequence, theirs: Sequence[list], where: str) -> tuple[int, list[str]]:
    """Numeric values compared, and disagreements (ours exact, smllib float: 1e-12 relative)."""
    problems: list[str] = []
    compared = 0
    if len(readouts) != len(theirs):
        return 0, [f"{where}: {len(readouts)} frames here, {len(theirs)} from smllib"]
    for number, (readout, values) in enumerate(zip(readouts, theirs, strict=True)):
        lib = {str(obis.obis_code): value for obis, value in values if len(obis) == 12}
        for reading in readout.readings:
            if reading.value is None:
                continue
            other = lib.get(str(reading.code))
            if not isinstance(other, int | float) or isinstance(other, bool):
                problems.append(f"{where} frame {number}: {reading.code} missing in smllib")
            elif not math.isclose(float(reading.value), other, rel_tol=1e-12, abs_tol=1e-12):
                problems.append(f"{where} frame {number}: {reading.code} {reading.value}/{other}")
            else:
                compared += 1
    return compared, problems


def sml_contests(quick: bool, section: Section) -> list[Contest]:
    framed, bare = sml_captures()
    generated = generated_sml(50 if quick else 500)
    checked = 0
    for name, data, crc in framed:
        count, problems = _compare_sml(
            ours_sml_stream(data), theirs_sml_stream_full(data, crc), name
        )
        checked += count
        section.errors.extend(problems)
    for name, data in bare:
        count, problems = _compare_sml([ours_sml_bare(data)], [theirs_sml_bare(data)], name)
        checked += count
        section.errors.extend(problems)
    mt175 = simulated_mt175(50 if quick else 500)
    for name, stream in (("generated", generated), ("simulated MT175", mt175)):
        count, problems = _compare_sml(
            ours_sml_stream(stream), theirs_sml_stream_full(stream, "x25"), name
        )
        checked += count
        section.errors.extend(problems)
    section.details["sml_values_compared"] = checked

    # As a daemon reads them: one long-lived reader per CRC kind over the captured frames one
    # after the other (repeated), and the bare message captures through the bare APIs.
    repeats = 5 if quick else 20
    streams = {
        crc: b"".join(data for _, data, kind in framed if kind == crc) * repeats
        for crc in {kind for _, _, kind in framed}
    }
    for crc, stream in streams.items():
        count, problems = _compare_sml(
            ours_sml_stream(stream), theirs_sml_stream_full(stream, crc), f"captures ({crc})"
        )
        section.errors.extend(problems)
    captures_items = len(framed) * repeats + len(bare)

    def ours_captures() -> None:
        for stream in streams.values():
            ours_sml_stream(stream)
        for _, data in bare:
            ours_sml_bare(data)

    def theirs_captures() -> None:
        for crc, stream in streams.items():
            theirs_sml_stream_full(stream, crc)
        for _, data in bare:
            theirs_sml_bare(data)

    # Informative: a new reader for every capture, which charges smllib its reader set-up
    # (~140 us here) once per frame; no daemon works like that.
    def ours_cold() -> None:
        for _, data, _ in framed:
            ours_sml_stream(data)

    def theirs_cold() -> None:
        for _, data, crc in framed:
            theirs_sml_stream_full(data, crc)

    frames = len(ours_sml_stream(generated))
    contests = []
    if captures_items:
        name = "SML captures vs smllib"
        contests.append(Contest(name, "frames", captures_items, ours_captures, theirs_captures))
        cold = "SML captures, new reader per frame"
        contests.append(Contest(cold, "frames", len(framed), ours_cold, theirs_cold, goal=False))
    return [
        *contests,
        Contest(
            "SML generated stream vs smllib",
            "frames",
            frames,
            lambda: ours_sml_stream(generated),
            lambda: theirs_sml_stream_full(generated, "x25"),
        ),
        Contest(
            "SML simulated MT175 stream vs smllib",
            "frames",
            len(ours_sml_stream(mt175)),
            lambda: ours_sml_stream(mt175),
            lambda: theirs_sml_stream_full(mt175, "x25"),
        ),
        # Informative: get_obis() does not decode the messages, only finds A = 1 entries.
        Contest(
            "SML generated vs smllib get_obis()",
            "frames",
            frames,
            lambda: ours_sml_stream(generated),
            lambda: theirs_sml_stream_obis(generated, "x25"),
            goal=False,
        ),
    ]


# --- IEC 62056-21 mode C -----------------------------------------------------------------------


def mode_c_blocks(quick: bool) -> list[tuple[str, bytes]]:
    """STX .. ETX BCC blocks: captures whose BCC is valid, and simulated ME162/MT174 readouts."""
    blocks = []
    for path in sorted((TESTDATA / "iec62056-21").glob("*.bin")):
        if path.name.startswith("dsmr_"):
            continue
        data = path.read_bytes()
        stx, etx = data.find(b"\x02"), data.find(b"\x03")
        if 0 <= stx < etx < len(data) - 1 and iec.bcc(data[stx + 1 : etx + 1]) == data[etx + 1]:
            blocks.append((path.name, data[stx : etx + 2]))
    for profile in (ME162, MT174):
        for number in range(5 if quick else 50):
            name = f"simulated {profile.name} #{number}"
            blocks.append((name, _simulated_block(profile, number)))
    return blocks


def _simulated_block(profile: object, number: int) -> bytes:
    config = MeterConfig(profile=profile, import_w=300 + 97 * number, speedup=math.inf)  # type: ignore[arg-type]
    model = MeterModel(config, now=0.0)
    now = 1000.0 * (number + 1)  # the counters advance with the clock
    ident = model.receive(iec.REQUEST, now)[0]
    block = model.receive(b"\x06050\r\n", ident.end)[0]
    return block.data


def ours_mode_c(block: bytes) -> tuple:
    receiver = iec.DataReceiver()
    receiver.feed(block)
    result = receiver.result()
    assert result is not None
    return result.readings


def theirs_mode_c(block: bytes) -> Any:
    from iec62056_21.messages import ReadoutDataMessage

    return ReadoutDataMessage.from_bytes(block)


def _compare_mode_c(name: str, block: bytes) -> tuple[int, list[str]]:
    ours = ours_mode_c(block)
    theirs = theirs_mode_c(block)
    by_code: dict[str, Any] = {}
    for reading in ours:
        by_code.setdefault(reading.code.text, reading)
    compared, problems = 0, []
    for line in theirs.data_block.data_lines:
        for data_set in line.data_sets[:1]:
            reading = by_code.get(data_set.address)
            if reading is None:
                problems.append(f"{name}: {data_set.address} missing here")
            elif reading.value is not None:
                if (Decimal(data_set.value), data_set.unit) != (reading.value, reading.unit):
                    problems.append(f"{name}: {data_set.address} {reading.value} / {data_set}")
                else:
                    compared += 1
            elif data_set.value != reading.raw:
                problems.append(f"{name}: {data_set.address} {reading.raw!r} / {data_set.value!r}")
    return compared, problems


def mode_c_contest(quick: bool, section: Section) -> Contest:
    blocks = mode_c_blocks(quick)
    checked = 0
    for name, block in blocks:
        count, problems = _compare_mode_c(name, block)
        checked += count
        section.errors.extend(problems)
    section.details["mode_c_values_compared"] = checked
    section.details["mode_c_inputs"] = [name for name, _ in blocks if "simulated" not in name]

    def ours() -> None:
        for _, block in blocks:
            ours_mode_c(block)

    def theirs() -> None:
        for _, block in blocks:
            theirs_mode_c(block)

    return Contest("IEC mode C readouts vs iec62056-21", "readouts", len(blocks), ours, theirs)


# --- DSMR P1 ------------------------------------------------------------------------------------

_REFERENCE_CDE = re.compile(r"(\d+)\\\.(\d+)\\\.(\d+)")


def dsmr_telegrams() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((TESTDATA / "iec62056-21").glob("dsmr_*.bin"))]


def ours_dsmr(raw: bytes) -> tuple:
    identification, readings = iec.parse_readout(raw)
    if identification is None:
        raise ProtocolError("no telegram")
    return readings


def _dsmr_parser() -> Any:
    from dsmr_parser import telegram_specifications
    from dsmr_parser.parsers import TelegramParser

    # No CRC check on either side: parse_readout checks none (see the module docstring).
    return TelegramParser(telegram_specifications.V5, apply_checksum_validation=False)


def _compare_dsmr(name: str, raw: bytes, parser: Any) -> tuple[int, list[str]]:
    from dsmr_parser.objects import CosemObject, MBusObject

    ours = ours_dsmr(raw)
    theirs = parser.parse(raw.decode("ascii"))
    compared, problems = 0, []
    for reference, obj in theirs.items():
        match = _REFERENCE_CDE.search(reference)
        if match is None or not isinstance(obj, CosemObject | MBusObject):
            continue
        value = obj.value
        if not isinstance(value, Decimal):
            continue
        cde = ".".join(match.groups())
        mine = [r for r in ours if r.code.cde == cde and r.value is not None]
        if not mine:
            problems.append(f"{name}: {cde} {value} missing here")
        elif mine[0].value != value or (mine[0].unit or None) != (obj.unit or None):
            problems.append(f"{name}: {cde} {mine[0].value} {mine[0].unit} / {value} {obj.unit}")
        else:
            compared += 1
    return compared, problems


def dsmr_contest(section: Section) -> Contest | None:
    telegrams = dsmr_telegrams()
    if not telegrams:
        return None
    parser = _dsmr_parser()
    checked = 0
    for name, raw in telegrams:
        count, problems = _compare_dsmr(name, raw, parser)
        checked += count
        section.errors.extend(problems)
    section.details["dsmr_values_compared"] = checked
    texts = [raw.decode("ascii") for _, raw in telegrams]

    def ours() -> None:
        for _, raw in telegrams:
            ours_dsmr(raw)

    def theirs() -> None:
        for text in texts:
            parser.parse(text)

    return Contest("DSMR telegrams vs dsmr-parser", "telegrams", len(telegrams), ours, theirs)


# --- the section -------------------------------------------------------------------------------

GOAL = 1.0  # not below the peer: a floor, not a target (see the module docstring)


def run(quick: bool) -> Section:
    section = Section("Decoder throughput against peers (same inputs, same process)")
    if not (TESTDATA / "sml").is_dir():
        # Without the captures only the generated inputs are measured; say so in the table.
        section.add("captures", None, "", note=f"skipped: no test data at {TESTDATA}")
    contests = [*sml_contests(quick, section), mode_c_contest(quick, section)]
    dsmr = dsmr_contest(section)
    if dsmr is not None:
        contests.append(dsmr)
    rounds, min_time = (3, 0.05) if quick else (9, 0.3)
    results = {}
    for contest in contests:
        ours, theirs = best_of(contest, rounds, min_time)
        ratio = ours / theirs
        section.add(f"{contest.name}: ours", ours, f"{contest.unit}/s")
        section.add(f"{contest.name}: theirs", theirs, f"{contest.unit}/s")
        section.add(
            f"{contest.name}: ratio", ratio, "x", goal=f">= {GOAL:g}" if contest.goal else ""
        )
        results[contest.name] = {
            "items_per_pass": contest.items,
            "ours_per_s": round(ours, 1),
            "theirs_per_s": round(theirs, 1),
            "ratio": round(ratio, 3),
        }
    section.details["contests"] = results
    section.details["rounds"] = rounds
    return section
