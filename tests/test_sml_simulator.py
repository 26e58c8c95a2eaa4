"""The simulated SML push meter: encoder, sans-I/O model, faults, options and its three runners.

What the simulator claims to have sent (``ServedFrame``) is checked against independent
decoders: SmlLib (PyPI ``smllib``) and the bit-by-bit CRC of ``tests/sml_frames.py``; our own
decoder is checked against the record too. The runners are driven with plain pyserial here;
``tests/test_sml_meter.py`` drives them through the project's port layer.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from smllib import SmlStreamReader as LibStreamReader
from smllib.errors import CrcError

from iskra_me162.errors import ConfigError
from iskra_me162.protocols.sml import SmlStreamReader
from iskra_me162.simulator.sml_encoder import (
    ESCAPE,
    ListEntry,
    message,
    push_frame,
    transport_frame,
)
from iskra_me162.simulator.sml_push import (
    PushCounters,
    ServedFrame,
    SmlFaults,
    SmlPtyMeter,
    SmlPushConfig,
    SmlPushModel,
    garble_8n1,
    parse_sml_push_config,
)
from iskra_me162.urlhandler.protocol_sim import parse_url
from tests import sml_frames
from tests.testdata import require_testdata

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANT = float("inf")
ENERGY_CODES = [f"1-0:{c}.8.{t}*255" for c in (1, 2) for t in (0, 1, 2)]
POWER_CODE = "1-0:16.7.0*255"
UNIT_NAMES = {30: "Wh", 27: "W"}
ISKRA_CAPTURE = "sml/iskra_isk00-7034__tibberlink.bin"  # an ISKRA meter with the MT175 layout


# --- helpers ---------------------------------------------------------------------------------
def model(now: float = 0.0, **config) -> SmlPushModel:
    config.setdefault("speedup", INSTANT)
    return SmlPushModel(SmlPushConfig(**config), now)


def lib_values(data: bytes) -> list[dict[str, tuple[Decimal, str]]]:
    """``{OBIS: (value, unit)}`` of every numeric entry of every good frame, by SmlLib."""
    reader = LibStreamReader()
    reader.add(data)
    frames = []
    while True:
        try:
            frame = reader.get_frame()
        except CrcError:
            continue
        if frame is None:
            return frames
        frames.append(
            {
                entry.obis.obis_code: (
                    Decimal(entry.value).scaleb(entry.scaler or 0),
                    UNIT_NAMES[entry.unit],
                )
                for entry in frame.get_obis()
                if isinstance(entry.value, int)
            }
        )


def our_values(data: bytes) -> tuple[list[dict[str, tuple[Decimal, str]]], SmlStreamReader]:
    reader = SmlStreamReader()
    reader.add(data)
    frames = [
        {
            str(_code(entry.obj_name)): (entry.scaled_value, entry.unit_name)
            for entry in frame.entries
            if type(entry.value) is int
        }
        for frame in reader.frames()
    ]
    return frames, reader


def _code(raw: bytes) -> str:
    a, b, c, d, e, f = raw
    return f"{a}-{b}:{c}.{d}.{e}*{f}"


def served(frame: ServedFrame) -> dict[str, tuple[Decimal, str]]:
    return {code: (value, unit) for code, value, unit in frame.values}


def frame_crc_ok(frame: bytes) -> bool:
    """The frame CRC by the reference's bit-by-bit X-25 (low byte first)."""
    return sml_frames.crc_bytes(frame[:-2]) == frame[-2:]


# --- encoder ---------------------------------------------------------------------------------
def _obis(text: str) -> bytes:
    return sml_frames.obis_bytes(text)


def test_encoder_rebuilds_a_real_iskra_frame_byte_for_byte():
    real = (require_testdata() / ISKRA_CAPTURE).read_bytes()
    server_id = bytes.fromhex("090149534b0004316b61")
    key = real[0x139:0x169]
    assert len(key) == 48
    entries = [
        ListEntry(_obis("129-129:199.130.3*255"), b"ISK"),
        ListEntry(_obis("1-0:0.0.9*255"), server_id),
        ListEntry(_obis("1-0:1.8.0*255"), 249769931, 30, -1, status=0x101A0),
        ListEntry(_obis("1-0:1.8.1*255"), 249769931, 30, -1),
        ListEntry(_obis("1-0:1.8.2*255"), 0, 30, -1),
        ListEntry(_obis("1-0:2.8.0*255"), 120688301, 30, -1),
        ListEntry(_obis("1-0:2.8.1*255"), 120688301, 30, -1),
        ListEntry(_obis("1-0:2.8.2*255"), 0, 30, -1),
        ListEntry(_obis("1-0:16.7.0*255"), -15, 27, 0, width=4),
        ListEntry(_obis("129-129:199.130.5*255"), key),
    ]
    built = push_frame(
        server_id=server_id,
        transaction=0x12923B42,
        req_file_id=bytes.fromhex("0630be6c"),
        list_name=bytes.fromhex("0100620affff"),
        sensor_seconds=0x0B7415F2,
        entries=entries,
    )
    assert built == real


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=8))
def test_transport_frame_matches_the_reference_encoder(payload, filler):
    # Payloads full of escapes: the reference escapes, pads and checks independently.
    payload = payload.replace(b"\x1b", ESCAPE[:1] * 4) + filler
    assert transport_frame(payload) == sml_frames.transport_frame(payload)


def test_message_matches_the_reference_encoder():
    body = sml_frames.public_open_res(bytes.fromhex("0a0149534b0000000001"), b"\x06\x30\xbe\x6c")
    ours = message(b"\x00\x00\x00\x07", 0x0101, body)
    theirs = sml_frames.message(0x0101, body, transaction_id=b"\x00\x00\x00\x07")
    assert ours == theirs


def test_list_entry_needs_a_six_byte_code():
    with pytest.raises(ValueError, match="6 bytes"):
        ListEntry(b"\x01\x00\x01\x08\x00", 1)


# --- the model -------------------------------------------------------------------------------
def test_a_frame_every_interval_with_values_as_served():
    meter = model(10.0, interval=2.0, import_w=1800, export_w=0)
    assert meter.pushes_due(11.99) == []
    assert meter.next_push_at == pytest.approx(12.0)
    [first] = meter.pushes_due(12.0)
    later = meter.pushes_due(16.5)
    assert [push.frame.number for push in [first, *later]] == [1, 2, 3]
    assert [push.transmission.start for push in later] == [14.0, 16.0]
    assert meter.next_push_at == pytest.approx(18.0)
    for push in [first, *later]:
        data = push.transmission.data
        assert push.transmission.baud == 9600
        assert data == push.frame.frame == push.frame.wire
        assert frame_crc_ok(data)
        assert lib_values(data) == [served(push.frame)]
        ours, reader = our_values(data)
        assert ours == [served(push.frame)]
        assert reader.crc_errors == 0
    # 1800 W for 2 s = 1 Wh = 10 tenths per frame.
    totals = [push.frame.value("1.8.0") for push in [first, *later]]
    assert totals == [Decimal("12345679.9"), Decimal("12345680.9"), Decimal("12345681.9")]


def test_mt175_layout_identity_and_signed_power():
    meter = model(import_w=200, export_w=1500)
    [push] = meter.pushes_due(1.0)
    frame = push.frame
    assert [code for code, _, _ in frame.values] == [*ENERGY_CODES, POWER_CODE]
    assert frame.value("1.8.1") == frame.value("1.8.0")  # MT175 repeats the total in tariff 1
    assert frame.value("1.8.2") == 0
    assert frame.value(POWER_CODE) == -1300
    assert (frame.unit("1.8.0"), frame.unit("16.7.0")) == ("Wh", "W")
    reader = SmlStreamReader()
    reader.add(push.transmission.data)
    [decoded] = reader.frames()
    assert decoded.server_id == frame.server_id == bytes.fromhex("0a0149534b0004316b61")
    names = [_code(entry.obj_name) for entry in decoded.entries]
    assert names[:2] == ["129-129:199.130.3*255", "1-0:0.0.9*255"]
    assert names[-1] == "129-129:199.130.5*255"
    assert decoded.entries[0].value == b"ISK"
    assert decoded.entries[2].status is not None  # the status word on 1.8.0, as MT175 sends


def test_tariff_two_and_power_changes_count_exactly():
    meter = model(import_w=3600, export_w=720, interval=1.0, import_tenths=(100, 50))
    meter.set_tariff(0.5, 2)  # 0.5 s at 3600 W in T1 = 5 tenths
    meter.set_power(1.5, import_w=0)  # 1 s at 3600 W in T2 = 10 tenths
    registers = meter.registers(3.0)
    assert registers.import_tenths == (105, 60)
    assert registers.export_tenths == (134_651, 5)  # 720 W = 2 tenths/s: 0.5 s T1, 2.5 s T2
    assert registers.import_total_wh == Decimal("16.5")
    assert (registers.import_w, registers.export_w, registers.tariff) == (0, 720, 2)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5_000_000_000), st.integers(0, 30_000), st.integers(1, 2)),
        min_size=1,
        max_size=12,
    )
)
def test_counters_never_drift(steps):
    """Whatever the power and tariff changes, import T1 + T2 is floor(energy / 0.1 Wh)
    exactly: no energy lost or made up at a change, however many there are."""
    counters = PushCounters(
        0.0, import_tenths=(0, 0), export_tenths=(0, 0), import_w=0, export_w=0, tariff=1
    )
    micros = 0
    watt_micros = 0
    power = 0
    for duration, new_power, tariff in steps:
        micros += duration
        watt_micros += power * duration
        now = micros / 1e6
        looked = sum(counters.snapshot(now).import_tenths)  # looking changes nothing
        counters.set_power(now, import_w=new_power, export_w=None)
        counters.set_tariff(now, tariff)
        power = new_power
        assert sum(counters.snapshot(now).import_tenths) == watt_micros // 360_000_000 == looked


def test_counters_over_a_million_frames_stay_exact():
    meter = model(import_w=1234, interval=1.0, import_tenths=(0, 0))
    registers = meter.registers(1_000_000.0)
    assert registers.import_tenths[0] == 1234 * 1_000_000 // 360


def test_scalers_change_what_is_sent_not_what_it_means():
    for energy_scaler in (-1, 0, 1, 2, 3):
        for power_scaler in (0, -1, -2):
            meter = model(
                import_w=987, energy_scaler=energy_scaler, power_scaler=power_scaler,
                import_tenths=(123_456_789, 0),
            )  # fmt: skip
            [push] = meter.pushes_due(1.0)
            values = served(push.frame)
            assert lib_values(push.transmission.data) == [values]
            assert our_values(push.transmission.data)[0] == [values]
            total = values["1-0:1.8.0*255"][0]
            exact = Decimal(meter.registers(1.0).import_total_tenths).scaleb(-1)
            step = Decimal(10) ** energy_scaler
            assert total <= exact < total + step, (energy_scaler, total, exact)
            assert total % step == 0
            assert values[POWER_CODE] == (987, "W")


def test_no_pin_sends_whole_kwh_only_and_no_power():
    meter = model(import_tenths=(123_456_789, 0), faults=SmlFaults(no_pin=True))
    [push] = meter.pushes_due(1.0)
    values = served(push.frame)
    assert POWER_CODE not in values
    assert values["1-0:1.8.0*255"] == (Decimal(12345000), "Wh")
    reader = SmlStreamReader()
    reader.add(push.transmission.data)
    [frame] = reader.frames()
    energy = [entry for entry in frame.entries if entry.obj_name[3:4] == b"\x08"]
    assert {entry.scaler for entry in energy} == {3}
    assert lib_values(push.transmission.data) == [values]


def test_escape_fault_doubles_1b1b1b1b_at_every_alignment():
    meter = model(faults=SmlFaults(escape=True))
    [push] = meter.pushes_due(1.0)
    data = push.transmission.data
    body = data[8:-8]
    positions = [m.start() for m in re.finditer(re.escape(ESCAPE * 2), body)]
    assert len(positions) == 4
    assert {position % 4 for position in positions} == {0, 1, 2, 3}
    assert frame_crc_ok(data)
    ours, reader = our_values(data)
    assert ours == [served(push.frame)] == lib_values(data)
    assert (reader.crc_errors, reader.truncated, reader.malformed) == (0, 0, 0)


def test_a_register_value_that_encodes_to_the_escape_sequence():
    tenths = int.from_bytes(ESCAPE, "big")
    meter = model(import_w=0, import_tenths=(tenths, 0))
    [push] = meter.pushes_due(1.0)
    assert push.frame.value("1.8.0") == Decimal(tenths).scaleb(-1)
    assert push.transmission.data.count(ESCAPE * 2) == 2  # 1.8.0 and 1.8.1
    assert our_values(push.transmission.data)[0] == [served(push.frame)]


def test_corrupt_frames_flip_one_bit_after_the_crc_and_are_dropped():
    meter = model(faults=SmlFaults(corrupt_every=2, escape=True))
    pushes = meter.pushes_due(5.0)
    assert [push.frame.fault for push in pushes] == ["", "corrupt", "", "corrupt", ""]
    stream = b"".join(push.transmission.data for push in pushes)
    for push in pushes:
        frame = push.frame
        differing = [a ^ b for a, b in zip(frame.frame, frame.wire, strict=True) if a != b]
        assert differing == ([1] if frame.fault else [])
        assert frame_crc_ok(frame.wire) is not bool(frame.fault)
    intact = [served(push.frame) for push in pushes if not push.frame.fault]
    ours, reader = our_values(stream)
    assert ours == intact == lib_values(stream)
    # Even with 1b1b1b1b 01010101 in the payload a damaged frame counts as one CRC error.
    assert (reader.crc_errors, reader.truncated, reader.malformed) == (2, 0, 0)


def test_truncated_frames_and_garbage_never_cost_the_next_frame():
    meter = model(faults=SmlFaults(truncate_every=3, garbage=50, escape=True))
    pushes = [push for second in range(1, 13) for push in meter.pushes_due(second)]
    assert [push.frame.fault for push in pushes].count("truncated") == 4
    for push in pushes:
        frame = push.frame
        assert push.transmission.data == frame.wire
        sent = frame.frame[: len(frame.frame) // 2] if frame.fault else frame.frame
        assert frame.wire[50:] == sent
    stream = b"".join(push.transmission.data for push in pushes)
    intact = [served(push.frame) for push in pushes if not push.frame.fault]
    ours, reader = our_values(stream)
    assert ours == intact
    assert reader.frames_ok == 8


def test_silent_meter_sends_nothing_and_counts_on():
    meter = model(import_w=3600, faults=SmlFaults(silent=True))
    assert meter.pushes_due(5.0) == []
    meter.faults = SmlFaults()
    [push] = meter.pushes_due(6.0)
    assert push.frame.number == 1
    assert push.frame.value("1.8.0") == Decimal("12345678.9") + 6


def test_a_late_runner_gets_only_the_last_frames():
    meter = model(interval=1.0)
    pushes = meter.pushes_due(1000.0)
    assert len(pushes) == 8
    assert pushes[-1].transmission.start == 1000.0


def test_frames_longer_than_the_interval_wait_for_the_line():
    meter = model(interval=0.1, speedup=1.0)
    pushes = [push for step in range(1, 61) for push in meter.pushes_due(step * 0.05)]
    assert 5 <= len(pushes) <= 9
    duration = pushes[0].transmission.duration
    assert duration == pytest.approx(len(pushes[0].transmission.data) * 10 / 9600)
    for before, after in itertools.pairwise(pushes):
        assert after.transmission.start == pytest.approx(before.transmission.end)


def test_the_meter_ignores_what_the_reader_sends():
    meter = model()
    assert meter.receive(b"/?!\r\n", 0.5) == []
    assert meter.listen_baud == 9600


# --- the line --------------------------------------------------------------------------------
def test_garble_8n1_equal_rates_and_a_hand_worked_case():
    data = bytes(range(256))
    assert garble_8n1(data, 9600, 9600) == data
    assert garble_8n1(data, 0, 9600) == b""
    # 0x00 at R is 9 bit times of space then a stop bit. A receiver at 2R sees a byte of
    # zeros (stop bit missing, delivered anyway), then starts again in the space and gets
    # seven zero bits and the stop bit as bit 7.
    assert garble_8n1(b"\x00", 1200, 2400) == b"\x00\x80"
    # 0xFF: the start bit lasts two received bit times, so bit 0 reads as 0.
    assert garble_8n1(b"\xff", 1200, 2400) == b"\xfe"


@pytest.mark.parametrize("heard", [300, 1200, 2400, 4800, 19200, 38400, 115200])
def test_frames_at_the_wrong_baud_never_decode(heard):
    meter = model(faults=SmlFaults(escape=True))
    stream = b"".join(push.transmission.data for push in meter.pushes_due(3.0))
    garbled = garble_8n1(stream, 9600, heard)
    ours, reader = our_values(garbled)
    assert ours == []
    assert reader.dropped_bytes + reader.buffered == len(garbled)


# --- options ---------------------------------------------------------------------------------
def test_options_from_text():
    config = parse_sml_push_config(
        {
            "serial": "12345",
            "power": "2500",
            "export": "100",
            "tariff": "2",
            "import_wh": "1000.5,20",
            "export_wh": "7",
            "interval": "0.5",
            "baud": "2400",
            "speedup": "inf",
            "energy_scaler": "0",
            "power_scaler": "-1",
            "garbage": "10",
            "escape": "",
            "no_pin": "yes",
            "corrupt_every": "3",
            "truncate_every": "0x4",
        }
    )
    assert config.server_id == bytes.fromhex("0a0149534b0000003039")
    assert (config.import_w, config.export_w, config.tariff) == (2500, 100, 2)
    assert (config.import_tenths, config.export_tenths) == ((10005, 200), (70, 0))
    assert (config.interval, config.baud, config.speedup) == (0.5, 2400, INSTANT)
    assert (config.energy_scaler, config.power_scaler) == (0, -1)
    assert config.faults == SmlFaults(
        corrupt_every=3, truncate_every=4, garbage=10, escape=True, no_pin=True
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise": "3"}, "does not apply to an SML push meter"),
        ({"power": "-5"}, "power"),
        ({"power": "5.5"}, "power=.5.5."),
        ({"tariff": "3"}, "tariff"),
        ({"import_wh": "1.25"}, "at most one decimal"),
        ({"import_wh": "1,2,3"}, "1 or 2 values"),
        ({"import_wh": "abc"}, "not a number"),
        ({"interval": "0"}, "interval"),
        ({"interval": "nan"}, "not a number"),
        ({"baud": "9601"}, "baud"),
        ({"energy_scaler": "-2"}, "energy_scaler"),
        ({"power_scaler": "1"}, "power_scaler"),
        ({"serial": "12ab"}, "digits"),
        ({"serial": "4294967296"}, "serial"),
        ({"escape": "maybe"}, "escape"),
        ({"garbage": "-1"}, "garbage"),
        ({"speedup": "0"}, "speedup"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_sml_push_config(options)


def test_urls_choose_the_push_meter_by_profile():
    config = parse_url("sim://mt175?power=800&interval=0.5&escape=1")
    assert isinstance(config, SmlPushConfig)
    assert (config.import_w, config.interval, config.faults.escape) == (800, 0.5, True)
    assert isinstance(parse_url("sim://MT175"), SmlPushConfig)
    with pytest.raises(ConfigError, match=r"sim://mt175\?noise=1: .* does not apply"):
        parse_url("sim://mt175?noise=1")
    with pytest.raises(ConfigError, match="unknown simulator option 'garbage'"):
        parse_url("sim://me162?garbage=3")


# --- the sim:// URL handler ------------------------------------------------------------------
@pytest.fixture
def sim_url():
    added = "iskra_me162.urlhandler" not in serial.protocol_handler_packages
    if added:
        serial.protocol_handler_packages.append("iskra_me162.urlhandler")

    def open_url(url: str, baud: int = 9600, timeout: float | None = 0.1):
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout)

    yield open_url
    if added:
        serial.protocol_handler_packages.remove("iskra_me162.urlhandler")


def read_for(ser, seconds: float) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data += ser.read(4096)
    return bytes(data)


def test_url_pushes_frames_at_the_set_interval(sim_url):
    with sim_url("sim://mt175?interval=0.2&speedup=inf&power=36000&garbage=20") as ser:
        data = read_for(ser, 0.75)
        frames = ser.frames
        assert ser.readouts == frames
        registers = ser.registers()
    assert len(frames) >= 3
    ours, _ = our_values(data)
    assert ours == [served(frame) for frame in frames]
    assert ours == lib_values(data)
    assert data == b"".join(frame.wire for frame in frames)
    assert registers.import_total_wh >= frames[-1].value("1.8.0")


def test_url_paced_frames_take_line_time(sim_url):
    with sim_url("sim://mt175?interval=0.2", timeout=0.02) as ser:
        data = bytearray()
        while not data or len(data) < len(ser.frames[0].wire):
            data += ser.read(4096)
        done = time.monotonic()
        frame = ser.frames[0]
    # 10 bit times per byte at 9600 Bd: a frame cannot be complete any sooner.
    assert done - frame.at >= len(frame.wire) * 10 / 9600
    assert data.startswith(frame.wire)


def test_url_reader_at_the_wrong_baud_gets_garbage(sim_url):
    with sim_url("sim://mt175?interval=0.2&speedup=inf", baud=4800) as ser:
        data = read_for(ser, 0.5)
        frames = ser.frames
    assert data
    assert data != frames[0].wire[: len(data)]
    assert our_values(data)[0] == []


def test_url_runtime_faults_and_power(sim_url):
    with sim_url("sim://mt175?interval=0.1&speedup=inf") as ser:
        ser.set_faults(silent=True)
        assert read_for(ser, 0.3) == b""
        ser.set_faults(SmlFaults(no_pin=True))
        ser.set_power(0, 0)
        ser.set_tariff(2)
        data = read_for(ser, 0.25)
    ours, _ = our_values(data)
    assert ours
    assert all(POWER_CODE not in values for values in ours)


def test_url_frames_of_a_mode_c_meter_is_an_error(sim_url):
    with sim_url("sim://me162?speedup=inf", baud=300) as ser, pytest.raises(ConfigError):
        _ = ser.frames


# --- the pty runner --------------------------------------------------------------------------
@pytest.fixture
def pty_meter(tmp_path):
    meters = []

    def make(config: SmlPushConfig | None = None, **kwargs) -> SmlPtyMeter:
        # 36 kW: 20 tenths of Wh per frame, so every frame's values differ.
        config = config or SmlPushConfig(interval=0.2, speedup=INSTANT, import_w=36_000)
        meter = SmlPtyMeter(tmp_path / "ttyMETER", config, **kwargs)
        meters.append(meter.start())
        return meter

    yield make
    for meter in meters:
        meter.stop()


def open_port(path, baud=9600, timeout=0.1) -> serial.Serial:
    return serial.Serial(str(path), baud, timeout=timeout)


def test_pty_pushes_to_a_reader_and_records_every_frame(pty_meter):
    seen = []
    meter = pty_meter(on_frame=seen.append)
    with open_port(meter.port) as ser:
        data = read_for(ser, 0.7)
        frames = meter.frames
    heard = [frame for frame in frames if frame.wire in data]
    assert len(heard) >= 2
    ours, _ = our_values(data)
    assert ours == [served(frame) for frame in heard]
    assert seen[: len(frames)] == frames


def test_pty_frames_for_nobody_are_lost(pty_meter):
    meter = pty_meter()
    time.sleep(0.5)
    sent_before = len(meter.frames)
    assert sent_before >= 2
    with open_port(meter.port) as ser:
        data = read_for(ser, 0.5)
        frames = meter.frames
    ours, _ = our_values(data)
    assert ours
    unheard = [served(frame) for frame in frames[:sent_before]]
    later = [served(frame) for frame in frames[sent_before:]]
    assert ours[0] not in unheard
    assert ours == later[later.index(ours[0]) :][: len(ours)]


def test_pty_reader_at_the_wrong_baud_gets_garbage(pty_meter):
    meter = pty_meter()
    with open_port(meter.port, baud=19200) as ser:
        data = read_for(ser, 0.6)
    assert data
    assert our_values(data)[0] == []


def test_pty_unplug_and_replug(pty_meter, tmp_path):
    meter = pty_meter()
    link = tmp_path / "ttyMETER"
    with open_port(link) as ser:
        assert read_for(ser, 0.3)
        meter.unplug()
        with pytest.raises(serial.SerialException):
            read_for(ser, 0.3)
    meter.replug()
    meter.set_power(7200)
    with open_port(link) as ser:
        data = read_for(ser, 0.5)
    ours, _ = our_values(data)
    assert ours
    assert ours[-1][POWER_CODE] == (7200, "W")


def test_wait_for_frames(pty_meter):
    meter = pty_meter()
    frames = meter.wait_for_frames(2, timeout=5)
    assert len(frames) == 2
    assert frames[1].number == frames[0].number + 1
    meter.set_faults(silent=True)
    with pytest.raises(TimeoutError):
        meter.wait_for_frames(1, timeout=0.3)


# --- the command line ------------------------------------------------------------------------
@pytest.fixture
def cli():
    processes = []

    def run(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "iskra_me162.simulator", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()


FRAME_LINE = re.compile(r"frame (\d+) at 9600 Bd: (.*?)( \[fault: \w+\])?$")


def test_cli_serves_prints_frames_reloads_control_file_and_stops(cli, tmp_path):
    link = tmp_path / "ttyMETER"
    control = tmp_path / "control"
    process = cli("--profile", "mt175", "--link", str(link), "--interval", "0.2", "--speedup",
                  "inf", "--power", "3600", "--escape", "--control", str(control))  # fmt: skip
    banner = process.stdout.readline()
    assert f"simulated mt175 meter on {os.readlink(link)} (link {link})" in banner
    with open_port(link) as ser:
        data = read_for(ser, 0.5)
        ours, _ = our_values(data)
        assert ours
        decoded = [
            {code: f"{value:f}{unit}" for code, (value, unit) in frame.items()} for frame in ours
        ]
        printed = []
        while not all(frame in printed for frame in decoded):
            match = FRAME_LINE.match(process.stdout.readline().strip())
            assert match, "frame line expected"
            assert int(match.group(1)) < 100, "the decoded frames were never printed"
            printed.append(dict(item.split("=") for item in match.group(2).split()))
        control.write_text("silent = 1\n")
        process.send_signal(signal.SIGHUP)
        line = process.stdout.readline()
        while line.startswith("frame "):
            line = process.stdout.readline()
        assert "applied" in line and "silent=True" in line
        time.sleep(0.3)
        ser.reset_input_buffer()
        assert read_for(ser, 0.5) == b""
    control.write_text("garbage = -1\n")
    process.send_signal(signal.SIGHUP)
    assert "control file ignored" in process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert not link.exists() and not link.is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--profile", "mt175", "--noise", "3"), "does not apply"),
        (("--profile", "me162", "--garbage", "3"), "unknown simulator option 'garbage'"),
        (("--profile", "mt175", "--interval", "0"), "interval"),
    ],
)
def test_cli_bad_options_exit_with_ex_config(cli, tmp_path, args, message):
    process = cli("--link", str(tmp_path / "tty"), *args)
    assert process.wait(10) == 78
    assert message in process.stderr.read()
    assert not (tmp_path / "tty").exists()
