"""SmlMeter: a push meter read through the real Port over a real pty.

The values a readout carries are compared with what the simulated meter records it sent
(``ServedFrame``), never with our decoder's view of the same bytes alone. Tests of the byte
stream's continuity feed a bare pty with frames from the independent reference encoder
(``tests/sml_frames.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tty
from datetime import UTC
from decimal import Decimal

import pytest

from iskra_me162 import sml_meter
from iskra_me162.errors import ConfigError, MeterTimeout, PortError
from iskra_me162.port import Port
from iskra_me162.readout import Readout
from iskra_me162.simulator.sml_push import ServedFrame, SmlFaults, SmlPtyMeter, SmlPushConfig
from iskra_me162.sml_meter import PIN_HINT, SmlMeter
from tests import sml_frames
from tests.sml_frames import Entry

INSTANT = float("inf")


# --- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def push_meter(tmp_path):
    """A simulated MT175 on a pty; 36 kW so that every frame's values differ."""
    meters = []

    def make(**faults) -> SmlPtyMeter:
        config = SmlPushConfig(
            interval=0.15,
            speedup=INSTANT,
            import_w=36_000,
            export_w=1_250,
            faults=SmlFaults(**faults),
        )
        meter = SmlPtyMeter(tmp_path / "ttyMETER", config)
        meters.append(meter.start())
        return meter

    yield make
    for meter in meters:
        meter.stop()


def sml_port(path, baud: int = 9600, ticks: list | None = None) -> Port:
    tick = (lambda: ticks.append(time.monotonic())) if ticks is not None else None
    return Port(str(path), baudrate=baud, serial_format="8N1", seven_bit_line=False, tick=tick)


def numeric(readout: Readout) -> dict[str, tuple[Decimal, str | None]]:
    return {
        str(reading.code): (reading.value, reading.unit)
        for reading in readout.readings
        if reading.value is not None
    }


def served_frame(readout: Readout, frames: list[ServedFrame], unique: bool = True) -> ServedFrame:
    """The intact served frame whose every value (and unit) the readout carries; ``unique``:
    exactly one such frame (the meter's values change from frame to frame)."""
    values = numeric(readout)
    matches = [
        frame
        for frame in frames
        if values == {code: (value, unit) for code, value, unit in frame.values}
    ]
    assert matches, f"readout {values} matches no served frame"
    assert len(matches) == 1 or not unique, f"readout {values} matches {len(matches)} frames"
    frame = matches[-1]
    assert frame.fault == ""
    assert readout.identity.manufacturer == "ISK"
    assert readout.identity.serial == frame.server_id.hex()
    return frame


def read_served(meter: SmlMeter, push: SmlPtyMeter, count: int) -> list[ServedFrame]:
    readouts = [meter.read() for _ in range(count)]
    frames = push.frames
    return [served_frame(readout, frames) for readout in readouts]


# --- values ----------------------------------------------------------------------------------
def test_readouts_carry_exactly_the_served_values(push_meter):
    push = push_meter()
    ticks: list[float] = []
    meter = SmlMeter(sml_port(push.port, ticks=ticks), frame_timeout=3.0)
    try:
        before = time.monotonic()
        readout = meter.read()
        frames = read_served(meter, push, 3)
    finally:
        meter.close()
    first = served_frame(readout, push.frames)
    assert readout.wall_time.tzinfo is UTC
    assert before <= readout.monotonic <= time.monotonic()
    assert readout.energy_wh("1.8.0") == first.value("1.8.0")
    assert readout.energy_wh("1.8.1") == first.value("1.8.0")
    assert readout.power_w("16.7.0") == 36_000 - 1_250
    numbers = [first.number] + [frame.number for frame in frames]
    stats = meter.stats
    # Consecutive frames, unless the line delivered two at once and the newest was taken.
    assert numbers == sorted(set(numbers))
    assert numbers[-1] - numbers[0] == len(numbers) - 1 + stats["frames_skipped"]
    assert stats["crc_errors"] == 0
    assert stats["frames_ok"] >= 4
    assert ticks, "the port's tick must run while the meter waits"


def test_a_frame_paced_at_9600_baud_is_read_in_few_chunks(tmp_path, caplog):
    # At 9600 Bd a read right after the previous one returns a byte or two; the meter lets a
    # begun frame gather (GATHER_S) so that a frame costs ~15 reads, not ~200 (CPU on a Pi).
    config = SmlPushConfig(interval=0.3, speedup=1.0, import_w=36_000, export_w=1_250)
    with SmlPtyMeter(tmp_path / "ttyPACED", config) as push:
        meter = SmlMeter(sml_port(push.port), frame_timeout=5.0)
        try:
            meter.read()  # the first readout may start in the middle of a frame
            caplog.set_level(logging.DEBUG, logger="iskra_me162.port")
            caplog.clear()
            readout = meter.read()
            chunks = [r for r in caplog.records if r.getMessage().startswith("RX ")]
            received = meter.stats["bytes_received"]
        finally:
            meter.close()
        served = served_frame(readout, push.frames)
    frame_bytes = len(served.wire)
    assert frame_bytes > 200 and received > 0
    # Without the pause: about frame_bytes / 2 chunks. With it: the frame's 10 bits per byte
    # at 9600 Bd, in slices of GATHER_S, plus the idle gap's first byte; generous bound.
    on_the_line = frame_bytes * 10 / 9600
    assert len(chunks) <= on_the_line / sml_meter.GATHER_S * 2 + 5, (len(chunks), frame_bytes)


def test_corrupted_frames_never_yield_a_value(push_meter):
    push = push_meter(corrupt_every=2, escape=True)
    meter = SmlMeter(sml_port(push.port), frame_timeout=3.0)
    try:
        [first] = read_served(meter, push, 1)
        crc_errors = meter.stats["crc_errors"]
        frames = read_served(meter, push, 3)
        stats = meter.stats
    finally:
        meter.close()
    served = push.frames
    corrupt = [
        frame for frame in served if frame.fault == "corrupt" and first.number < frame.number
    ]
    corrupt = [frame for frame in corrupt if frame.number < frames[-1].number]
    assert corrupt
    # What a reader that skipped the CRC would have reported: 1.8.0 with its lowest bit flipped.
    flipped = {Decimal(int(frame.value("1.8.0") * 10) ^ 1).scaleb(-1) for frame in corrupt}
    assert not flipped & {frame.value("1.8.0") for frame in frames}
    assert all(frame.fault == "" for frame in frames)
    # Every damaged frame in between is counted as a CRC error, and only those.
    assert stats["crc_errors"] - crc_errors == len(corrupt)
    assert stats["truncated"] == stats["malformed"] == 0


def test_garbage_and_truncated_frames_resync_without_losing_the_next_good_frame(push_meter):
    push = push_meter(garbage=60, truncate_every=3, escape=True)
    meter = SmlMeter(sml_port(push.port), frame_timeout=3.0)
    try:
        [first] = read_served(meter, push, 1)
        before = meter.stats
        frames = read_served(meter, push, 5)
        after = meter.stats
    finally:
        meter.close()
    between = [frame for frame in push.frames if first.number < frame.number <= frames[-1].number]
    intact = [frame for frame in between if frame.fault == ""]
    truncated = [frame for frame in between if frame.fault == "truncated"]
    assert truncated
    skipped = after["frames_skipped"] - before["frames_skipped"]
    assert len(frames) + skipped == len(intact)
    assert {frame.number for frame in frames} <= {frame.number for frame in intact}
    assert after["truncated"] - before["truncated"] == len(truncated)
    assert after["dropped_bytes"] > before["dropped_bytes"]


def test_a_register_that_encodes_to_the_escape_sequence(tmp_path):
    tenths = int.from_bytes(sml_frames.ESCAPE, "big")
    config = SmlPushConfig(
        interval=0.15, speedup=INSTANT, import_w=0, import_tenths=(tenths, 0)
    )
    with SmlPtyMeter(tmp_path / "tty", config) as push:
        meter = SmlMeter(sml_port(push.port), frame_timeout=3.0)
        try:
            readout = meter.read()
        finally:
            meter.close()
        frame = served_frame(readout, push.frames)
    assert readout.energy_wh("1.8.0") == frame.value("1.8.0") == Decimal(tenths).scaleb(-1)


def test_sim_url_mt175_through_the_port():
    port = sml_port("sim://mt175?interval=0.1&speedup=inf&power=2000&export=500")
    meter = SmlMeter(port, frame_timeout=3.0)
    try:
        readouts = [meter.read() for _ in range(3)]
    finally:
        meter.close()
    totals = [readout.energy_wh("1.8.0") for readout in readouts]
    assert totals == sorted(totals)
    assert totals[0] >= Decimal("12345678.9")
    assert {readout.power_w("16.7.0") for readout in readouts} == {1500}


# --- failures ----------------------------------------------------------------------------------
def test_silence_is_a_meter_timeout_that_says_nothing_arrived(push_meter):
    push = push_meter(silent=True)
    ticks: list[float] = []
    port = sml_port(push.port, ticks=ticks)
    meter = SmlMeter(port, frame_timeout=1.0)
    try:
        start = time.monotonic()
        with pytest.raises(MeterTimeout) as caught:
            meter.read()
        elapsed = time.monotonic() - start
        message = str(caught.value)
        assert "no good SML frame within 1 s" in message
        assert push.port in message
        assert "nothing arrived" in message
        assert 1.0 <= elapsed < 5.0
        assert len(ticks) >= 3  # SIGTERM and the watchdog are served while waiting
        assert meter.stats["timeouts"] == 1
        push.set_faults(silent=False)
        frames = read_served(meter, push, 1)  # the port stayed open and works
    finally:
        meter.close()
    assert frames[0].number == 1


def test_wrong_baud_rate_is_named_in_the_timeout(push_meter):
    push = push_meter()
    meter = SmlMeter(sml_port(push.port, baud=4800), frame_timeout=1.0)
    try:
        with pytest.raises(MeterTimeout, match=r"\d+ bytes arrived but no SML frame") as caught:
            meter.read()
    finally:
        meter.close()
    assert "9600 8N1" in str(caught.value)


def test_bad_crcs_are_named_in_the_timeout(push_meter):
    push = push_meter(corrupt_every=1)
    meter = SmlMeter(sml_port(push.port), frame_timeout=1.0)
    try:
        with pytest.raises(MeterTimeout, match=r"[1-9]\d* frames dropped for a bad CRC") as caught:
            meter.read()
    finally:
        meter.close()
    assert "head misaligned" in str(caught.value)


def test_unplug_is_a_port_error_and_replug_works_after_reopen(push_meter, tmp_path):
    push = push_meter()
    meter = SmlMeter(sml_port(tmp_path / "ttyMETER"), frame_timeout=2.0)
    try:
        read_served(meter, push, 1)
        push.unplug()
        with pytest.raises(PortError) as caught:
            meter.read()
        assert type(caught.value) is PortError  # gone, not merely quiet
        with pytest.raises(PortError, match="cannot open"):
            meter.read()
        push.replug()
        frames = read_served(meter, push, 2)
        stats = meter.stats
    finally:
        meter.close()
    assert frames[1].number > frames[0].number
    assert stats["opens"] == 2


def test_frame_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="timeout"):
        SmlMeter(sml_port("/dev/null"), frame_timeout=0)


# --- the byte stream across calls --------------------------------------------------------------
@pytest.fixture
def bare_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(slave)
    os.close(master)


def reference_frame(number: int) -> bytes:
    return sml_frames.sml_frame(
        [
            Entry("129-129:199.130.3*255", b"ISK"),
            Entry("1-0:1.8.0*255", 1000 + number, unit=sml_frames.UNIT_WH, scaler=-1, width=8),
        ],
        transaction=number,
    )


def total(readout: Readout) -> Decimal | None:
    return readout.energy_wh("1.8.0")


def test_bytes_after_a_frame_belong_to_the_next_one_until_the_port_is_reopened(bare_pty):
    master, path = bare_pty
    meter = SmlMeter(sml_port(path), frame_timeout=0.6)
    frames = {number: reference_frame(number) for number in range(1, 8)}
    try:
        first = threading.Timer(0.2, lambda: os.write(master, frames[1] + frames[2][:100]))
        first.start()  # once read() has opened the port (opening flushes the input)
        assert total(meter.read()) == Decimal("100.1")
        first.join()
        os.write(master, frames[2][100:])
        assert total(meter.read()) == Decimal("100.2")  # its start came with frame 1

        # Three frames at once (the caller was busy): the newest counts, none is stale.
        os.write(master, frames[3] + frames[4] + frames[5])
        assert total(meter.read()) == Decimal("100.5")
        assert meter.stats["frames_skipped"] == 2

        # Half a frame, then the port is closed and reopened: its rest must not complete it.
        os.write(master, frames[6][:100])
        with pytest.raises(MeterTimeout, match="100 bytes arrived"):
            meter.read()
        meter.close()
        meter.frame_timeout = 3.0
        writer = threading.Timer(0.3, lambda: os.write(master, frames[6][100:]))
        writer.start()
        later = threading.Timer(0.8, lambda: os.write(master, frames[7]))
        later.start()
        assert total(meter.read()) == Decimal("100.7")
        writer.join()
        later.join()
        stats = meter.stats
    finally:
        meter.close()
    assert stats["frames_ok"] == 6
    assert stats["crc_errors"] == 0
    assert stats["opens"] == 2
    assert stats["dropped_bytes"] == len(frames[6])  # both halves, never a frame


# --- the PIN hint ------------------------------------------------------------------------------
def test_a_meter_without_pin_is_explained_once_per_process(push_meter, monkeypatch, caplog):
    monkeypatch.setattr(sml_meter, "_pin_hint_logged", False)
    push = push_meter(no_pin=True)
    caplog.set_level(logging.INFO, logger="iskra_me162.sml_meter")
    for _ in range(2):  # a second SmlMeter, as after a config reload, does not repeat it
        meter = SmlMeter(sml_port(push.port), frame_timeout=3.0)
        try:
            readouts = [meter.read() for _ in range(2)]
        finally:
            meter.close()
        frames = push.frames
        for readout in readouts:
            frame = served_frame(readout, frames, unique=False)  # whole kWh: frames repeat
            assert readout.power_w("16.7.0") is None
            assert readout.energy_wh("1.8.0") == frame.value("1.8.0")
            assert frame.value("1.8.0") % 1000 == 0
    hints = [record for record in caplog.records if record.getMessage() == PIN_HINT]
    assert len(hints) == 1
    assert hints[0].levelno == logging.INFO


def test_a_meter_with_pin_gets_no_hint(push_meter, monkeypatch, caplog):
    monkeypatch.setattr(sml_meter, "_pin_hint_logged", False)
    push = push_meter()
    caplog.set_level(logging.INFO, logger="iskra_me162.sml_meter")
    meter = SmlMeter(sml_port(push.port), frame_timeout=3.0)
    try:
        read_served(meter, push, 2)
    finally:
        meter.close()
    assert not [record for record in caplog.records if "PIN" in record.getMessage()]
