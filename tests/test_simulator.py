"""The simulated meter: the sans-I/O model with byte strings, then the pty runner, the sim:// URL
handler and the command line with a plain pyserial client written out step by step here.

The client steps are hand-written mode C (request, ident, ACK, baud change, readout) and the
BCC is computed here from its definition, so these tests do not lean on the project's own
protocol core or port layer.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from iskra_me162.errors import ConfigError, PortError
from iskra_me162.simulator import (
    MT174,
    SIMPLE,
    EnergyCounters,
    Faults,
    MeterConfig,
    MeterModel,
    PtyMeter,
    SessionState,
    parse_config,
)
from iskra_me162.simulator.line import byte_time, garble, with_parity_bit
from iskra_me162.simulator.options import parse_control_text, parse_faults
from iskra_me162.urlhandler.protocol_sim import parse_url

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANT = float("inf")  # speedup without pacing: each message arrives at once
REQUEST = b"/?!\r\n"
ACK_9600 = b"\x06050\r\n"
ACK_300 = b"\x06000\r\n"
ME162_IDENT = b"/ISK5ME162-0033\r\n"
ME162_CODES = ["C.1.0", "0.0.0", "1.8.0", "1.8.1", "1.8.2", "2.8.0", "2.8.1", "2.8.2", "F.F"]
ENERGY_RE = re.compile(r"\d{7}\.\d{3}\*kWh")
LINE_RE = re.compile(r"([^()\r\n]+)\(([^()]*)\)\r\n")


# --- helpers ---------------------------------------------------------------------------------
def xor_bcc(data: bytes) -> int:
    """BCC by its definition: XOR of every byte after STX up to and including ETX."""
    result = 0
    for byte in data:
        result ^= byte
    return result


def split_block(block: bytes) -> tuple[bytes, int]:
    """``STX payload(..ETX) BCC`` -> (payload incl. ETX, BCC); asserts the framing."""
    assert block[:1] == b"\x02", block[:20]
    assert block[-2:-1] == b"\x03", block[-20:]
    return block[1:-1], block[-1]


def block_lines(block: bytes) -> list[tuple[str, str]]:
    payload, _ = split_block(block)
    text = payload.decode("ascii")
    assert text.endswith("!\r\n\x03"), text[-10:]
    body = text[: -len("!\r\n\x03")]
    lines = LINE_RE.findall(body)
    assert "".join(f"{code}({value})\r\n" for code, value in lines) == body
    return lines


def wh(value: str) -> int:
    """``0001234.567*kWh`` -> 1234567 (Wh)."""
    assert ENERGY_RE.fullmatch(value), value
    return int(value[:-4].replace(".", ""))


def valid_block(block: bytes) -> bool:
    payload, check = split_block(block)
    return xor_bcc(payload) == check


def session(model: MeterModel, now: float, ack: bytes = ACK_9600):
    """Request + ACK on the model; returns (ident transmission, readout transmission)."""
    [ident] = model.receive(REQUEST, now)
    answer = model.receive(ack, ident.end + 0.1)
    assert len(answer) == 1
    return ident, answer[0]


def instant_model(now: float = 0.0, **config) -> MeterModel:
    config.setdefault("speedup", INSTANT)
    return MeterModel(MeterConfig(**config), now)


# --- the model: a correct session ------------------------------------------------------------
def test_request_is_answered_with_the_ident_after_the_reaction_time():
    model = instant_model()
    [ident] = model.receive(REQUEST, 10.0)
    assert ident.data == ME162_IDENT
    assert ident.baud == 300
    assert ident.start == pytest.approx(10.2)  # upper-case "ISK": 200 ms
    assert model.state(ident.end) is SessionState.AWAIT_ACK


def test_lower_case_third_letter_answers_after_20_ms():
    model = instant_model(profile=MT174)
    [ident] = model.receive(REQUEST, 10.0)
    assert ident.data == b"/ISk5MT174-0001\r\n"
    assert ident.start == pytest.approx(10.02)


def test_ack_with_the_offered_baud_char_gives_a_readout_at_9600_with_a_valid_bcc():
    model = instant_model(serial="28342193")
    ident, readout = session(model, 5.0)
    assert readout.baud == 9600
    assert readout.start == pytest.approx(ident.end + 0.1 + 0.2)
    payload, check = split_block(readout.data)
    assert check == xor_bcc(payload)
    lines = block_lines(readout.data)
    assert [code for code, _ in lines] == ME162_CODES
    values = dict(lines)
    assert values["C.1.0"] == values["0.0.0"] == "28342193"
    assert values["F.F"] == "0000000"
    for code in ME162_CODES[2:8]:
        assert ENERGY_RE.fullmatch(values[code]), (code, values[code])
    assert wh(values["1.8.0"]) == wh(values["1.8.1"]) + wh(values["1.8.2"])
    assert wh(values["2.8.0"]) == wh(values["2.8.1"]) + wh(values["2.8.2"])
    assert model.state(readout.end) is SessionState.IDLE
    # What the meter reports having sent is what is in the bytes.
    assert list(readout.readout.lines) == lines
    assert readout.readout.fault == ""


def test_ack_with_baud_char_0_stays_at_300():
    _, readout = session(instant_model(), 0.0, ACK_300)
    assert readout.baud == 300
    assert valid_block(readout.data)


def test_paced_transmissions_take_ten_bit_times_per_character():
    model = MeterModel(MeterConfig(speedup=2.0), 0.0)
    [ident] = model.receive(REQUEST, 0.0)
    request_time = len(REQUEST) * 10 / 300 / 2
    assert ident.start == pytest.approx(request_time + 0.2)
    assert ident.end - ident.start == pytest.approx(len(ME162_IDENT) * 10 / 300 / 2)
    [readout] = model.receive(ACK_9600, ident.end)
    assert readout.duration == pytest.approx(len(readout.data) * 10 / 9600 / 2)


def test_a_rate_above_the_offered_one_ends_the_session():
    model = instant_model(baud_char="4")  # offers 4800 Bd
    [ident] = model.receive(REQUEST, 0.0)
    assert ident.data == b"/ISK4ME162-0033\r\n"
    assert model.receive(ACK_9600, ident.end) == []
    assert model.state(ident.end) is SessionState.IDLE
    [_, readout] = [*session(model, 5.0, b"\x06040\r\n")]
    assert readout.baud == 4800


def test_programming_mode_is_not_offered():
    model = instant_model()
    [ident] = model.receive(REQUEST, 0.0)
    assert model.receive(b"\x06051\r\n", ident.end) == []
    assert model.state(ident.end) is SessionState.IDLE


def test_an_ack_after_the_timeout_is_ignored_and_the_meter_is_idle_again():
    model = instant_model()
    [ident] = model.receive(REQUEST, 0.0)
    assert model.state(ident.end + 1.4) is SessionState.AWAIT_ACK
    assert model.receive(ACK_9600, ident.end + 1.6) == []
    assert model.state(ident.end + 1.6) is SessionState.IDLE
    session(model, 10.0)  # and it answers the next request


def test_a_wrong_message_instead_of_the_ack_ends_the_session():
    model = instant_model()
    [ident] = model.receive(REQUEST, 0.0)
    assert model.receive(b"hello\r\n", ident.end) == []
    assert model.receive(ACK_9600, ident.end + 0.1) == []


def test_addressed_requests():
    model = instant_model(serial="28342193")
    assert len(model.receive(b"/?28342193!\r\n", 0.0)) == 1
    assert len(instant_model(serial="28342193").receive(b"/?00028342193!\r\n", 0.0)) == 1
    assert instant_model(serial="28342193").receive(b"/?12345678!\r\n", 0.0) == []


def test_request_is_found_after_noise_and_split_across_reads():
    model = instant_model()
    assert model.receive(b"\x00\x7f\xffjunk/?", 0.0) == []
    [ident] = model.receive(b"!\r\n", 0.1)
    assert ident.data == ME162_IDENT


def test_the_meter_does_not_listen_while_it_talks():
    model = MeterModel(MeterConfig(speedup=1.0), 0.0)
    [ident] = model.receive(REQUEST, 0.0)
    assert model.receive(REQUEST, ident.start + 0.01) == []
    assert model.receive(ACK_9600, ident.start + 0.01) == []
    [readout] = model.receive(ACK_9600, ident.end)
    assert readout.baud == 9600


def test_endless_garbage_does_not_grow_the_inbox():
    model = instant_model()
    for step in range(200):
        assert model.receive(b"\x00" * 1000, float(step)) == []
    assert len(model._inbox) <= 128
    [ident] = model.receive(REQUEST, 300.0)
    assert ident.data == ME162_IDENT


# --- the model: counters ---------------------------------------------------------------------
def test_counters_advance_at_the_configured_power_in_the_active_tariff():
    model = instant_model(import_w=3600, export_w=1800, import_wh=(1000, 2000), export_wh=(0, 7))
    first = dict(block_lines(session(model, 100.0)[1].data))
    second = dict(block_lines(session(model, 110.0)[1].data))  # +10 s
    assert wh(second["1.8.1"]) - wh(first["1.8.1"]) == 10
    assert wh(second["1.8.2"]) == wh(first["1.8.2"]) == 2000
    assert wh(second["2.8.1"]) - wh(first["2.8.1"]) == 5
    model.set_tariff(110.5, 2)
    third = dict(block_lines(session(model, 120.5)[1].data))
    assert wh(third["1.8.2"]) - wh(second["1.8.2"]) == 10
    for values in (first, second, third):
        assert wh(values["1.8.0"]) == wh(values["1.8.1"]) + wh(values["1.8.2"])
        assert wh(values["2.8.0"]) == wh(values["2.8.1"]) + wh(values["2.8.2"])


def test_power_change_counts_the_time_before_it_at_the_old_power():
    counters = EnergyCounters(0.0, import_wh=(0,), export_wh=(0,), import_w=3600)
    counters.set_power(10.0, import_w=7200)
    assert counters.snapshot(20.0).import_wh == (30,)  # 10 Wh + 20 Wh
    assert counters.snapshot(19.0).import_wh == (30,)  # time going backwards changes nothing


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 100_000),  # seconds
            st.integers(0, 20_000),  # import W
            st.integers(0, 20_000),  # export W
            st.integers(1, 2),  # tariff
        ),
        max_size=30,
    )
)
def test_totals_are_exact_sums_and_no_energy_is_lost(steps):
    counters = EnergyCounters(0.0, import_wh=(500, 70), export_wh=(3, 0))
    now = 0
    import_j = export_j = 0
    for seconds, import_w, export_w, tariff in steps:
        counters.set_power(float(now), import_w, export_w)
        counters.set_tariff(float(now), tariff)
        now += seconds
        import_j += import_w * seconds
        export_j += export_w * seconds
    registers = counters.snapshot(float(now))
    assert registers.import_total_wh == 570 + import_j // 3600
    assert registers.export_total_wh == 3 + export_j // 3600
    lines = dict(MeterConfig().profile.data_lines("1", registers))
    assert wh(lines["1.8.0"]) == wh(lines["1.8.1"]) + wh(lines["1.8.2"])
    assert wh(lines["2.8.0"]) == wh(lines["2.8.1"]) + wh(lines["2.8.2"])


# --- the model: other profiles ---------------------------------------------------------------
def test_mt174_profile_has_obis_prefixes_four_tariffs_and_power_registers():
    model = instant_model(profile=MT174, import_w=2468, export_w=0)
    _, readout = session(model, 0.0)
    assert valid_block(readout.data)
    values = dict(block_lines(readout.data))
    assert values["1-0:1.7.0*255"] == "2.468*kW"
    assert values["1-0:2.7.0*255"] == "0.000*kW"
    assert values["0-0:C.1.0*255"] == values["1-0:0.0.0*255"]
    assert values["0-0:F.F.0*255"] == "0000000"
    tariffs = [wh(values[f"1-0:1.8.{t}*255"]) for t in (1, 2, 3, 4)]
    assert wh(values["1-0:1.8.0*255"]) == sum(tariffs)


def test_simple_profile_has_no_tariffs_and_no_power():
    _, readout = session(instant_model(profile=SIMPLE), 0.0)
    assert valid_block(readout.data)
    assert [code for code, _ in block_lines(readout.data)] == ["0.0.0", "1.8.0", "2.8.0"]


# --- the model: faults -----------------------------------------------------------------------
def test_noise_before_the_ident():
    [ident] = instant_model(faults=Faults(noise=5)).receive(REQUEST, 0.0)
    assert ident.data == b"\x7f" * 5 + ME162_IDENT
    [ident] = instant_model(faults=Faults(noise=3, noise_byte=0)).receive(REQUEST, 0.0)
    assert ident.data == b"\x00" * 3 + ME162_IDENT


def test_ignore_baud_proposes_9600_but_talks_at_300():
    model = instant_model(faults=Faults(ignore_baud=True))
    ident, readout = session(model, 0.0)
    assert ident.data == ME162_IDENT  # still offers '5'
    assert readout.baud == 300
    assert valid_block(readout.data)


def test_corrupt_every_second_readout_flips_one_digit_so_only_the_bcc_shows_it():
    model = instant_model(faults=Faults(corrupt_every=2))
    results = [session(model, float(10 * n))[1] for n in range(4)]
    assert [valid_block(r.data) for r in results] == [True, False, True, False]
    damaged = results[1]
    assert damaged.readout.fault == "corrupt"
    sent = dict(block_lines(damaged.data))  # still parses
    told = dict(damaged.readout.lines)
    differing = [code for code in told if sent[code] != told[code]]
    assert differing == ["1.8.0"]
    assert ENERGY_RE.fullmatch(sent["1.8.0"])
    assert abs(wh(sent["1.8.0"]) - wh(told["1.8.0"])) == 1


def test_bad_bcc_every_third_readout_keeps_the_data():
    model = instant_model(faults=Faults(bad_bcc_every=3))
    results = [session(model, float(10 * n))[1] for n in range(3)]
    assert [valid_block(r.data) for r in results] == [True, True, False]
    assert block_lines(results[2].data) == list(results[2].readout.lines)
    assert results[2].readout.fault == "bad_bcc"


def test_truncated_readout_stops_half_way():
    model = instant_model(faults=Faults(truncate_every=1))
    _, readout = session(model, 0.0)
    assert readout.data[:1] == b"\x02"
    assert b"\x03" not in readout.data
    assert b"!" not in readout.data
    assert readout.readout.fault == "truncated"
    assert model.state(readout.end) is SessionState.IDLE


def test_silent_meter_answers_nothing():
    model = instant_model(faults=Faults(silent=True))
    assert model.receive(REQUEST, 0.0) == []
    model.faults = Faults()
    [ident] = model.receive(REQUEST, 1.0)
    model.faults = Faults(silent=True)  # falls silent in the middle of a session
    assert model.receive(ACK_9600, ident.end) == []
    model.faults = Faults()
    assert len(model.receive(REQUEST, 5.0)) == 1


def test_lockout_refuses_a_new_session_for_a_while():
    model = instant_model(faults=Faults(lockout=30.0))
    _, readout = session(model, 0.0)
    assert model.receive(REQUEST, readout.end + 10) == []
    assert model.receive(REQUEST, readout.end + 29) == []
    assert len(model.receive(REQUEST, readout.end + 31)) == 1


def test_lockout_also_follows_a_session_without_ack():
    model = instant_model(faults=Faults(lockout=5.0))
    [ident] = model.receive(REQUEST, 0.0)
    deadline = ident.end + 1.5
    assert model.receive(REQUEST, deadline + 4) == []
    assert len(model.receive(REQUEST, deadline + 6)) == 1


def test_high_bit_sends_the_parity_bit_as_bit_7():
    model = instant_model(faults=Faults(high_bit=True))
    ident, readout = session(model, 0.0)
    assert any(byte & 0x80 for byte in ident.data)
    for byte in ident.data + readout.data:
        low = byte & 0x7F
        assert byte >> 7 == bin(low).count("1") % 2
    masked = bytes(byte & 0x7F for byte in readout.data)
    assert bytes(byte & 0x7F for byte in ident.data) == ME162_IDENT
    assert valid_block(masked)


def test_faults_and_config_are_validated():
    with pytest.raises(ConfigError, match="noise"):
        Faults(noise=-1)
    with pytest.raises(ConfigError, match="noise_byte"):
        Faults(noise_byte=256)
    with pytest.raises(ConfigError, match="lockout"):
        Faults(lockout=-1)
    with pytest.raises(ConfigError, match="serial"):
        MeterConfig(serial="12ab")
    with pytest.raises(ConfigError, match="speedup"):
        MeterConfig(speedup=0)
    with pytest.raises(ConfigError, match="import_wh"):
        MeterConfig(import_wh=(1, 2, 3))
    with pytest.raises(ConfigError, match="baud"):
        MeterConfig(baud_char="9")
    with pytest.raises(ConfigError, match="tariff"):
        MeterModel(MeterConfig(profile=SIMPLE, tariff=2), 0.0)
    with pytest.raises(ConfigError, match="power"):
        MeterModel(MeterConfig(import_w=-5), 0.0)


# --- options as text -------------------------------------------------------------------------
def test_options_from_text():
    config = parse_config({"power": "450", "export": "20", "echo": "", "noise_byte": "0x00"})
    assert (config.import_w, config.export_w) == (450, 20)
    assert config.faults == Faults(echo=True, noise_byte=0)
    assert parse_config({"speedup": "inf"}).speedup == INSTANT
    assert parse_config({"import_wh": "5,6"}).start_import_wh == (5, 6)
    assert parse_config({}, "mt174").profile is MT174
    assert parse_config({"profile": "simple"}, "mt174").profile is SIMPLE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bogus": "1"}, "unknown simulator option 'bogus'"),
        ({"power": "lots"}, "power='lots'"),
        ({"echo": "maybe"}, "echo='maybe'"),
        ({"profile": "me999"}, "unknown meter profile 'me999'"),
        ({"corrupt_every": "-2"}, "corrupt_every"),
        ({"speedup": "nan"}, "speedup"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(options)


def test_control_file_text():
    text = "# faults for the next test\nsilent = 1\necho\n\npower = 900  # W\n"
    assert parse_control_text(text) == {"silent": "1", "echo": "", "power": "900"}
    assert parse_faults({"silent": "1"}, Faults(echo=True)) == Faults(echo=True, silent=True)
    with pytest.raises(ConfigError, match=r"ctl:2: unknown option 'serial'"):
        parse_control_text("echo=1\nserial = 5\n", "ctl")


# --- the line --------------------------------------------------------------------------------
def test_byte_time():
    assert byte_time(300) == pytest.approx(1 / 30)
    assert byte_time(9600, 10) == pytest.approx(10 / 96000)
    assert byte_time(300, INSTANT) == 0


def test_equal_rates_pass_bytes_unchanged():
    data = bytes(range(128))
    assert garble(data, 9600, 9600) == data


def test_a_fast_receiver_of_a_slow_sender_gets_a_flood_of_nuls():
    data = b"\x02C.1.0(12345678)\r\n1.8.0(0001234.567*kWh)\r\n!\r\n\x03"
    heard = garble(data, 300, 9600)
    assert len(heard) > 5 * len(data)
    assert heard.count(0) > len(heard) // 2
    assert b"1.8.0" not in heard


def test_a_slow_receiver_of_a_fast_sender_gets_a_few_odd_bytes():
    data = b"C.1.0(12345678)\r\n" * 10
    heard = garble(data, 9600, 300)
    assert 0 < len(heard) < len(data) // 10
    assert b"C.1.0" not in heard


def test_with_parity_bit():
    assert with_parity_bit(b"\x00\x01\x03\x7f") == b"\x00\x81\x03\xff"


# --- the pty runner --------------------------------------------------------------------------
def open_port(path, baud=300, timeout=3.0) -> serial.Serial:
    """A plain pyserial port as a mode C reader opens it (timeout fixed at construction)."""
    return serial.Serial(str(path), baud, bytesize=7, parity="E", timeout=timeout)


def read_block(ser) -> bytes:
    """Read up to ETX and the BCC after it."""
    block = ser.read_until(b"\x03")
    assert block.endswith(b"\x03"), block[-40:]
    return block + ser.read(1)


def client_session(ser, switch_to: int | None = 9600) -> tuple[bytes, bytes]:
    """Request, ident, ACK, baud change: the mode C steps, written out."""
    ser.write(REQUEST)
    ident = ser.read_until(b"\n")
    ack = ACK_9600 if switch_to else ACK_300
    ser.write(ack)
    ser.flush()
    if switch_to and switch_to != ser.baudrate:
        ser.baudrate = switch_to
    return ident, read_block(ser)


def read_for(ser, seconds: float) -> bytes:
    """Everything that arrives in ``seconds`` (the port's timeout must be shorter)."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data += ser.read(4096)
    return bytes(data)


def read_settled(ser, limit: float = 5.0) -> bytes:
    """Read until something arrived and then a read timed out (or ``limit`` passed)."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = ser.read(4096)
        if chunk:
            data += chunk
        elif data:
            break
    return bytes(data)


@pytest.fixture
def pty_meter(tmp_path):
    meters = []

    def make(config: MeterConfig | None = None, **kwargs) -> PtyMeter:
        meter = PtyMeter(tmp_path / "ttyMETER", config or MeterConfig(speedup=INSTANT), **kwargs)
        meters.append(meter.start())
        return meter

    yield make
    for meter in meters:
        meter.stop()


def test_pty_session_with_baud_switch(pty_meter, tmp_path):
    seen = []
    meter = pty_meter(on_readout=seen.append)
    link = tmp_path / "ttyMETER"
    assert link.is_symlink()
    assert os.readlink(link) == meter.path
    assert meter.path.startswith("/dev/pts/")
    with open_port(link) as ser:
        ident, block = client_session(ser)
    assert ident == ME162_IDENT
    payload, check = split_block(block)
    assert check == xor_bcc(payload)
    lines = block_lines(block)
    assert [code for code, _ in lines] == ME162_CODES
    [served] = meter.readouts
    assert list(served.lines) == lines
    assert served.baud == 9600
    assert seen == [served]


def test_pty_readout_without_switch_and_registers(pty_meter):
    meter = pty_meter(MeterConfig(speedup=INSTANT, import_w=0, import_wh=(7000, 3000)))
    with open_port(meter.port) as ser:
        _, block = client_session(ser, switch_to=None)
    values = dict(block_lines(block))
    assert wh(values["1.8.1"]) == meter.registers().import_wh[0] == 7000
    assert wh(values["1.8.0"]) == 10000


def test_pty_paced_line_takes_real_time(pty_meter):
    meter = pty_meter(MeterConfig(speedup=1.0))
    with open_port(meter.port) as ser:
        start = time.monotonic()
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT
        ident_time = time.monotonic() - start
        ser.write(ACK_9600)
        ser.baudrate = 9600
        start = time.monotonic()
        block = read_block(ser)
        readout_time = time.monotonic() - start
    assert valid_block(block)
    # Lower bounds only: the line cannot be faster than 10 bits per character (+ reaction).
    assert ident_time >= 0.9 * (0.2 + len(ME162_IDENT) / 30)
    assert readout_time >= 0.9 * (0.2 + len(block) / 960)
    assert ident_time < 10 and readout_time < 10


def test_pty_meter_that_ignores_its_baud_proposal_garbles_a_reader_at_9600(pty_meter):
    meter = pty_meter(MeterConfig(speedup=INSTANT, faults=Faults(ignore_baud=True)))
    with open_port(meter.port, timeout=0.3) as ser:
        ser.write(REQUEST)
        assert read_settled(ser) == ME162_IDENT
        ser.write(ACK_9600)
        ser.baudrate = 9600
        heard = read_settled(ser)
        assert heard, "a UART at the wrong rate still delivers bytes"
        assert b"1.8.0" not in heard
        assert heard.count(0) > len(heard) // 2  # mostly NULs, as a fast UART hears slow bits
        # The reader's fall-back: stay at 300 Bd, and the readout arrives intact.
        ser.baudrate = 300
        ser.write(REQUEST)
        assert read_settled(ser) == ME162_IDENT
        ser.write(ACK_300)
        block = read_settled(ser)
    assert valid_block(block)
    assert [r.baud for r in meter.readouts] == [300, 300]


def test_pty_request_at_the_wrong_rate_is_not_heard(pty_meter):
    meter = pty_meter()
    with open_port(meter.port, baud=9600, timeout=1.0) as ser:
        time.sleep(0.2)  # let the meter see the reader's rate
        ser.write(REQUEST)
        assert ser.read(100) == b""
        ser.baudrate = 300
        ser.timeout  # noqa: B018 - reading the timeout is harmless, setting it is not on a pty
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT


def test_pty_reader_switching_too_late_gets_garbage(pty_meter):
    meter = pty_meter(MeterConfig(speedup=INSTANT, reaction_time=0.05))
    with open_port(meter.port, timeout=0.2) as ser:
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT
        ser.write(ACK_9600)
        time.sleep(0.5)  # the readout went out at 9600 while we listened at 300
        heard = ser.read(100_000)
        assert heard and b"1.8.0" not in heard
    assert meter.readouts[-1].baud == 9600


def test_pty_echo_noise_and_fault_changes_while_running(pty_meter):
    meter = pty_meter()
    with open_port(meter.port, timeout=0.5) as ser:
        meter.set_faults(echo=True, noise=4)
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == REQUEST
        assert ser.read_until(b"\n") == b"\x7f" * 4 + ME162_IDENT
        ser.write(ACK_300)
        assert ser.read_until(b"\n") == ACK_300
        assert valid_block(read_block(ser))

        assert meter.set_faults(Faults(silent=True)) == Faults(silent=True)
        ser.write(REQUEST)
        assert read_for(ser, 0.5) == b""
        meter.set_faults(silent=False)
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT
    with pytest.raises(ConfigError, match="unknown fault"):
        meter.set_faults(bogus=True)


def test_pty_corrupt_and_truncated_readouts(pty_meter):
    meter = pty_meter(MeterConfig(speedup=INSTANT, faults=Faults(corrupt_every=2)))
    with open_port(meter.port, timeout=0.5) as ser:
        assert valid_block(client_session(ser)[1])
        ser.baudrate = 300
        assert not valid_block(client_session(ser)[1])
        meter.set_faults(corrupt_every=0, truncate_every=1)
        ser.baudrate = 300
        ser.write(REQUEST)
        ser.read_until(b"\n")
        ser.write(ACK_9600)
        ser.baudrate = 9600
        partial = read_settled(ser)
    assert partial.startswith(b"\x02") and b"\x03" not in partial
    assert [r.fault for r in meter.readouts] == ["", "corrupt", "truncated"]


def test_pty_unplug_and_replug_under_the_same_link(pty_meter, tmp_path):
    link = tmp_path / "ttyMETER"
    meter = pty_meter()
    old_path = meter.path
    ser = open_port(link, timeout=1.0)
    try:
        meter.unplug()
        assert not meter.plugged
        assert not link.exists() and not link.is_symlink()
        with pytest.raises(serial.SerialException):
            ser.read(1)
        with pytest.raises(serial.SerialException):
            open_port(link)
        meter.replug()  # the old slave is still open, so the new pty has another number
        assert meter.plugged
        assert os.readlink(link) == meter.path != old_path
    finally:
        ser.close()
    with open_port(link) as ser:
        ident, block = client_session(ser)
    assert ident == ME162_IDENT
    assert valid_block(block)


def test_pty_output_for_a_reader_that_left_is_lost_and_reopening_works(pty_meter):
    meter = pty_meter(MeterConfig(speedup=INSTANT, reaction_time=0.3))
    with open_port(meter.port) as ser:
        ser.write(REQUEST)
    time.sleep(0.6)  # the ident went out while nobody listened
    # Same settings as before: on a bare pty this open fails with EINVAL (see pty_meter.py).
    with open_port(meter.port, timeout=0.5) as ser:
        assert ser.read(100) == b""
        ident, block = client_session(ser)
    assert ident == ME162_IDENT
    assert valid_block(block)


def test_pty_refuses_to_replace_a_regular_file(tmp_path):
    target = tmp_path / "ttyMETER"
    target.write_text("precious")
    meter = PtyMeter(target, MeterConfig(speedup=INSTANT))
    with pytest.raises(PortError, match="not a symlink"):
        meter.start()
    meter.stop()
    assert target.read_text() == "precious"


# --- the sim:// URL handler ------------------------------------------------------------------
@pytest.fixture
def sim_url():
    added = "iskra_me162.urlhandler" not in serial.protocol_handler_packages
    if added:
        serial.protocol_handler_packages.append("iskra_me162.urlhandler")

    def open_url(url: str, baud: int = 300, timeout: float | None = 2.0):
        return serial.serial_for_url(url, baudrate=baud, bytesize=7, parity="E", timeout=timeout)

    yield open_url
    if added:
        serial.protocol_handler_packages.remove("iskra_me162.urlhandler")


def test_url_session(sim_url):
    with sim_url("sim://me162?speedup=inf&serial=28342193&power=450") as ser:
        assert type(ser).__module__ == "iskra_me162.urlhandler.protocol_sim"
        ident, block = client_session(ser)
        served = ser.readouts
    assert ident == ME162_IDENT
    payload, check = split_block(block)
    assert check == xor_bcc(payload)
    lines = block_lines(block)
    assert dict(lines)["C.1.0"] == "28342193"
    assert [list(r.lines) for r in served] == [lines]


def test_url_profiles_and_options(sim_url):
    with sim_url("sim://mt174?speedup=inf&power=2500") as ser:
        ident, block = client_session(ser)
    assert ident == b"/ISk5MT174-0001\r\n"
    assert dict(block_lines(block))["1-0:1.7.0*255"] == "2.500*kW"
    with sim_url("sim://simple?speedup=inf") as ser:
        _, block = client_session(ser, switch_to=None)
    assert [code for code, _ in block_lines(block)] == ["0.0.0", "1.8.0", "2.8.0"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sim://me162?bogus=1", "unknown simulator option 'bogus'"),
        ("sim://me999", "unknown meter profile"),
        ("sim://me162?power=1&power=2", "twice"),
        ("sim://me162/x", "path"),
        ("sim://me162?noise=-3", "noise"),
    ],
)
def test_bad_urls_are_config_errors(sim_url, url, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sim_url(url)
    with pytest.raises(ConfigError):
        parse_url(url)


def test_url_switching_before_the_ack_is_caught(sim_url):
    # The URL handler sees the true order of write() and the baud change: an ACK sent at
    # 9600 Bd is garbage to a meter listening at 300.
    with sim_url("sim://me162?speedup=inf", timeout=0.5) as ser:
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT
        ser.baudrate = 9600
        ser.write(ACK_9600)
        assert ser.read(1000) == b""
        assert ser.readouts == []


def test_url_ignore_baud_garbles_and_fallback_works(sim_url):
    with sim_url("sim://me162?speedup=inf&ignore_baud=1", timeout=0.5) as ser:
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT
        ser.write(ACK_9600)
        ser.baudrate = 9600
        heard = read_settled(ser)
        assert heard and b"1.8.0" not in heard
        ser.baudrate = 300
        _, block = client_session(ser, switch_to=None)
    assert valid_block(block)


def test_url_echo_noise_and_runtime_faults(sim_url):
    with sim_url("sim://me162?speedup=inf&echo&noise=2") as ser:
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == REQUEST
        assert ser.read_until(b"\n") == b"\x7f\x7f" + ME162_IDENT
        ser.set_faults(echo=False, noise=0, silent=True)
        ser.timeout = 0.5  # fine here: the URL handler is not a pty
        ser.write(ACK_300)  # not an answer: a silent meter ends the session and says nothing
        assert ser.read(100) == b""
        ser.write(REQUEST)
        assert ser.read(100) == b""
        ser.set_faults(silent=False)
        ser.write(REQUEST)
        assert ser.read_until(b"\n") == ME162_IDENT


def test_url_read_timeout_in_waiting_reset_and_cancel(sim_url):
    with sim_url("sim://me162?speedup=inf", timeout=0.3) as ser:
        start = time.monotonic()
        assert ser.read(10) == b""
        assert 0.25 <= time.monotonic() - start < 3
        ser.write(REQUEST)
        assert ser.in_waiting == 0  # the meter's reaction time has not passed
        time.sleep(0.4)
        assert ser.in_waiting == len(ME162_IDENT)
        ser.reset_input_buffer()
        assert ser.in_waiting == 0
        ser.reset_output_buffer()
        ser.flush()

        ser.timeout = None  # blocks until cancel_read
        canceller = threading.Timer(0.3, ser.cancel_read)
        canceller.start()
        start = time.monotonic()
        assert ser.read(10) == b""
        assert time.monotonic() - start < 5
        canceller.join()
    with pytest.raises(serial.PortNotOpenError):
        ser.read(1)


def test_url_paced_line_and_partial_reads(sim_url):
    with sim_url("sim://me162?speedup=1", timeout=5.0) as ser:
        start = time.monotonic()
        ser.write(REQUEST)
        ser.flush()  # like tcdrain: the request takes 5/30 s on the line
        assert time.monotonic() - start >= 0.9 * len(REQUEST) / 30
        first = ser.read(1)
        first_at = time.monotonic() - start
        rest = ser.read_until(b"\n")
        all_at = time.monotonic() - start
    assert first + rest == ME162_IDENT
    assert first_at >= 0.9 * (len(REQUEST) / 30 + 0.2 + 1 / 30)
    assert all_at >= 0.9 * (len(REQUEST) / 30 + 0.2 + len(ME162_IDENT) / 30)


# --- the command line ------------------------------------------------------------------------
def read_line(stream, timeout: float = 10.0) -> str:
    """One line of a child's stdout, or fail after ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the simulator printed nothing"
    return stream.readline()


@pytest.fixture
def cli(tmp_path):
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


def test_cli_serves_prints_readouts_reloads_control_file_and_stops(cli, tmp_path):
    link = tmp_path / "ttyMETER"
    control = tmp_path / "control"
    process = cli("--link", str(link), "--speedup", "inf", "--power", "3600", "--control",
                  str(control))  # fmt: skip
    banner = read_line(process.stdout)
    assert f"on {os.readlink(link)} (link {link})" in banner
    with open_port(link, timeout=1.0) as ser:
        _, block = client_session(ser)
        printed = read_line(process.stdout)
        sent = block_lines(block)
        assert printed.strip() == "readout 1 at 9600 Bd: " + " ".join(
            f"{code}={value}" for code, value in sent
        )
        control.write_text("silent = 1\n")
        process.send_signal(signal.SIGHUP)
        assert "applied" in read_line(process.stdout)
        ser.baudrate = 300
        ser.write(REQUEST)
        assert read_for(ser, 0.5) == b""
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert not link.exists() and not link.is_symlink()


def test_cli_bad_option_exits_with_ex_config(cli, tmp_path):
    process = cli("--link", str(tmp_path / "tty"), "--serial", "12ab")
    assert process.wait(10) == 78
    assert "serial" in process.stderr.read()
    assert not (tmp_path / "tty").exists()
